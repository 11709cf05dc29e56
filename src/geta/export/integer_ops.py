"""Integer convolutions that onnxruntime cannot find by itself: DQ -> Conv becomes ConvInteger.

onnxruntime turns a QDQ convolution into its integer kernel ``QLinearConv`` only when the
convolution's output is quantized again: DequantizeLinear -> Conv -> QuantizeLinear. geta
quantizes layer *inputs*, so a convolution whose output does not reach a QuantizeLinear
directly runs in float on dequantized weights: ResNet's last convolution of a block and its
shortcut (they feed the residual add), a convolution followed by pooling, and every
convolution whose next quantizer has fewer than 8 bits (the exact Clip in front of that
QuantizeLinear is narrower than the 8-bit container, so onnxruntime cannot drop it and the
pattern breaks).

`integer_convolutions` rewrites each such convolution, in the exported graph, into the
explicit integer form (ONNX ``ConvInteger``), which needs nothing after it::

    DequantizeLinear(xq, sx, zx) ─┐                       xq ─┐
    DequantizeLinear(wq, sw, zw) ─┼─ Conv ─ y   becomes   wq ─┼─ ConvInteger ─ Cast ─ Mul(sx·sw) ─ Add(b) ─ y
    b ────────────────────────────┘                           (int32 sums)   (float)

The integer codes are the same, the sums are exact in int32 and the scale sx·sw (one per
output channel once a BatchNorm is folded in) is applied once per output, so the result is
the float convolution of the dequantized tensors up to float rounding. Convolutions that
onnxruntime fuses itself (the output reaches a QuantizeLinear through at most a Relu and a
Clip that covers the 8-bit range) are left alone: ``QLinearConv`` also writes 8-bit outputs.

Speed: onnxruntime (1.32) has no optimised CPU kernel for ``ConvInteger``. On a ResNet-50 at
50 % group sparsity, 8-bit (2-core x86_64 with AVX512-VNNI, contended), the 21 rewritten
convolutions took 80 % of the kernel time and the QDQ file became slower than the float one
(0.83x at batch 1, 0.58x at batch 32; 1.69x and 1.37x faster without the rewrite). Hence
`geta.export.onnx` applies it only on request (``integer_convolutions=True``): for runtimes
and accelerators that need an integer-only graph, or once onnxruntime speeds the kernel up.
Running those convolutions as ``QLinearConv`` instead needs their outputs quantized, i.e. the
residual add's operands quantized in the model itself (a change of the model, not of its
export).

onnxruntime's CPU ``ConvInteger`` takes one zero point per tensor; geta's weight zero points
are one value for all channels (0, or 128 for saturation-safe uint8 codes), so they qualify.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["integer_convolutions"]

_PASS_THROUGH = ("Relu",)  # ops onnxruntime removes in front of a QuantizeLinear


def _const(value: Any) -> np.ndarray | None:
    """The constant array behind ``value`` (an initializer or a Constant), else None."""
    import onnx_ir as ir

    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _dequantized(value: Any) -> tuple[Any, np.ndarray, np.ndarray, int] | None:
    """(codes value, scale, zero point, axis) when ``value`` comes from a DequantizeLinear."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    codes, scale_v, zero_v = (list(node.inputs) + [None, None])[:3]
    scale, zero = _const(scale_v), _const(zero_v)
    if scale is None or codes is None:
        return None
    if zero is None:
        zero = np.zeros((), dtype=np.uint8)
    axis = node.attributes.get("axis")
    return codes, scale.astype(np.float32), zero, int(axis.value) if axis is not None else 1


def _clip_covers(node: Any, q_node: Any) -> bool:
    """A Clip whose bounds hold the whole integer range of the QuantizeLinear after it."""
    lo, hi = (_const(v) if v is not None else None for v in (list(node.inputs) + [None, None])[1:3])
    scale = _const(q_node.inputs[1])
    zero = _const(q_node.inputs[2]) if len(q_node.inputs) > 2 else np.zeros((), np.uint8)
    if scale is None or zero is None or scale.size != 1 or zero.size != 1:
        return False
    info = np.iinfo(zero.dtype)
    q_lo, q_hi = (info.min - int(zero)) * float(scale), (info.max - int(zero)) * float(scale)
    slack = 1e-6 * max(abs(q_lo), abs(q_hi))  # the bounds are float32 products code·scale
    return (lo is None or float(lo) <= q_lo + slack) and (hi is None or float(hi) >= q_hi - slack)


def _requantized(value: Any) -> bool:
    """onnxruntime fuses DQ -> Conv -> Q: every path from ``value`` ends in a QuantizeLinear."""
    if value.is_graph_output() or not value.uses():
        return False
    for node, _ in value.uses():
        if node.op_type == "QuantizeLinear":
            continue
        if node.op_type in _PASS_THROUGH and _requantized(node.outputs[0]):
            continue
        if node.op_type == "Clip":
            after = [n for n, _ in node.outputs[0].uses()]
            if after and all(n.op_type == "QuantizeLinear" and _clip_covers(node, n) for n in after):
                continue
        return False
    return True


def _integer_form(graph: Any, conv: Any) -> list[Any] | None:
    """The ConvInteger nodes replacing ``conv``, or None when it is not a QDQ convolution."""
    import onnx_ir as ir

    x = _dequantized(conv.inputs[0])
    w = _dequantized(conv.inputs[1])
    bias_v = conv.inputs[2] if len(conv.inputs) > 2 else None
    bias = _const(bias_v)
    if x is None or w is None or (bias_v is not None and bias is None):
        return None
    (xq, sx, zx, _), (wq, sw, zw, axis) = x, w
    if sx.size != 1 or zx.size != 1 or np.unique(zw).size != 1 or _const(wq) is None:
        return None
    channels = int(_const(wq).shape[0])
    if sw.size not in (1, channels) or (sw.size > 1 and axis != 0):
        return None
    rank = len(_const(wq).shape)
    shape = (1, -1) + (1,) * (rank - 2)  # (1, C, 1, 1): the channel axis of the output
    name = conv.name or "conv"

    def init(array: np.ndarray, suffix: str) -> Any:
        v = ir.Value(name=f"{name}.{suffix}", const_value=ir.tensor(array, name=f"{name}.{suffix}"))
        graph.register_initializer(v)
        return v

    zero_w = init(np.asarray(zw.reshape(-1)[0], dtype=zw.dtype), "w_zero_point")
    zero_x = init(np.asarray(zx.reshape(()), dtype=zx.dtype), "x_zero_point")
    scale = init((sx.reshape(()) * sw.astype(np.float32)).reshape(shape).astype(np.float32), "scale")
    attrs = [a for a in conv.attributes.values()]
    acc = ir.Node("", "ConvInteger", [xq, wq, zero_x, zero_w], attrs, name=f"{name}.integer")
    cast = ir.Node("", "Cast", [acc.outputs[0]], [ir.AttrInt64("to", ir.DataType.FLOAT)], name=f"{name}.cast")
    mul = ir.Node("", "Mul", [cast.outputs[0], scale], name=f"{name}.scale")
    nodes = [acc, cast, mul]
    if bias is not None:
        b = init(bias.astype(np.float32).reshape(shape), "bias")
        nodes.append(ir.Node("", "Add", [mul.outputs[0], b], name=f"{name}.bias"))
    return nodes


def integer_convolutions(model: Any) -> int:
    """Rewrite every QDQ convolution of ``model`` (an onnx-ir model) that onnxruntime would run in
    float into ``ConvInteger`` form (module docstring); returns how many were rewritten."""
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    graph = model.graph
    count = 0
    for conv in list(graph):
        if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or _requantized(conv.outputs[0]):
            continue
        nodes = _integer_form(graph, conv)
        if nodes is None:
            continue
        old = conv.outputs[0]
        ir.convenience.replace_nodes_and_values(graph, conv, [conv], nodes, [old], [nodes[-1].outputs[0]])
        count += 1
    if count:
        RemoveUnusedNodesPass()(model)  # the weights' DequantizeLinear and their scales
    return count
