"""MACs of ops that declare no `MacRule`, from torch's FLOP counter (docs/method.md §4).

The ops geta quantizes (conv, linear, matmul, attention) declare a `MacRule` with their handler
(`geta.ops.registry.mac_rule`). A model may run others that multiply matrices, e.g.
``aten.lstm`` (an ``nn.LSTM``): it is left in float, but its cost is real and belongs in the
BOPs. For such an op the captured node is run again on
``meta`` tensors of its recorded shapes (no data, no memory) under
`torch.utils.flop_counter.FlopCounterMode`, which counts the matrix products the op decomposes
into; MACs = FLOPs / 2 (the counter counts a multiply-add as two FLOPs).

An op the counter sees no product in (an elementwise op, a norm) has no MACs: `flop_macs`
returns None and the op is not a layer.

>>> import torch
>>> from geta.graph.capture import capture
>>> lstm = torch.nn.LSTM(4, 8, batch_first=True)
>>> graph = capture(lstm, (torch.randn(2, 3, 4),))
>>> node = next(n for n in graph.call_nodes() if "lstm" in str(n.target))
>>> flop_macs(node) == 2 * 3 * (4 * 32 + 8 * 32)  # batch · steps · (x·W_ih + h·W_hh), 4 gates of 8
True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from geta.ops.registry import has_trait
from geta.ops.traits import SIGN_THROUGH

__all__ = ["flop_macs", "op_name"]


def op_name(node: fx.Node) -> str:
    """The short name of an ATen op node: 'lstm' for ``aten.lstm.input``."""
    packet = getattr(node.target, "overloadpacket", None)
    name = getattr(packet, "__name__", None) or getattr(node.target, "__name__", str(node.target))
    return str(name).split(".")[-1]


def _meta(value: Any) -> Any:
    """An empty ``meta`` tensor of a recorded value's shape and dtype (recursively in sequences)."""
    if isinstance(value, torch.Tensor):
        return torch.empty(value.shape, dtype=value.dtype, device="meta")
    if isinstance(value, (list, tuple)):
        return [_meta(v) for v in value]
    return value


def _arg(arg: Any) -> Any:
    if isinstance(arg, fx.Node):
        return _meta(arg.meta.get("val"))
    if isinstance(arg, (list, tuple)):
        return [_arg(a) for a in arg]
    if isinstance(arg, dict):
        return {k: _arg(v) for k, v in arg.items()}
    return arg


def _candidate(node: fx.Node) -> bool:
    """An ATen op that might multiply matrices: not elementwise, not declared to move or keep
    values (a view, a pool: `geta.ops.traits.SIGN_THROUGH`), with a tensor of rank >= 2 in."""
    target = node.target
    if not isinstance(target, torch._ops.OpOverload) or torch.Tag.pointwise in target.tags:
        return False
    if has_trait(target, *SIGN_THROUGH):
        return False
    values = [a.meta.get("val") for a in node.all_input_nodes]
    return any(isinstance(v, torch.Tensor) and v.dim() >= 2 for v in values)


def flop_macs(node: fx.Node) -> int | None:
    """MACs of ``node`` as torch's FLOP counter counts them, or None (no product counted).

    Never raises: an op that cannot run on ``meta`` tensors is reported as not counted.
    """
    if not _candidate(node):
        return None
    from torch.utils.flop_counter import FlopCounterMode

    args, kwargs = _arg(list(node.args)), _arg(dict(node.kwargs))
    try:
        with FlopCounterMode(display=False) as counter:
            node.target(*args, **kwargs)  # type: ignore[operator]
    except Exception:  # an op without a meta kernel: nothing can be said about its cost
        return None
    flops = int(counter.get_total_flops())
    return flops // 2 if flops > 0 else None
