"""A deployable copy of a quantized model: geta's fake-quantizers replaced by explicit QDQ modules.

`deployable(model)` deep-copies the model and swaps every geta quantizer for a module that
computes the same values in deployment form, and that `torch.onnx.export` writes as ONNX
QuantizeLinear / DequantizeLinear nodes (through the public `torch.onnx.ops.symbolic`):

- a **weight** with b <= 8 bits becomes constant integer codes k (``integer_codes``, so
  Q(W) = k·step exactly) + a DequantizeLinear with scale = step. With more than 8 bits the
  fake-quantized weight is kept as a float tensor (exactly Q(W)).
- a layer **input** becomes Clip → QuantizeLinear → DequantizeLinear with scale = step and the
  integer range of the rounded bit width, further capped at round(qmax**t / step), which is
  exactly where the fake-quant clips. If the exponent t != 1, Abs/Min/Pow/Sign nodes compute
  sign(x)·min(|x|, qmax)**t first. Above 8 bits: the same arithmetic with float Round/Clip.

With ``fold_batchnorm`` each BatchNorm that directly follows a convolution is folded in, exactly:
the codes stay, the weight's scale becomes one scale per output channel (`deployable`).

Why some weights are uint8 with zero point 128. On x86 CPUs with AVX2 but without VNNI,
onnxruntime runs fused int8 layers (QLinearConv, QGemm) with u8s8 kernels built on
VPMADDUBSW, which adds two u8·s8 products in a *saturating* int16: with activations up to
255 and full 8-bit weight codes (|k| <= 127) the sums overflow and accuracy collapses. With
|k| <= 63 they cannot (2·255·63 < 2**15). Rather than clamping weights to 7 bits (which
changes the model), such a weight is stored as uint8 codes k + 128 with zero point 128: the
same values, and onnxruntime then uses its exact u8u8 kernels. ``saturation_safe=False``
keeps symmetric int8 for runtimes without this problem (VNNI CPUs, GPUs, NPUs).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from geta.export.bake import batchnorm_factors, can_fold, conv_bn_pairs, replace_by_identity
from geta.export.info import ExportError, TensorExport
from geta.quant.attach import INPUT_QUANTIZER_ATTR, input_quantizer, weight_quantizers
from geta.quant.functional import MIN_QMAX, MIN_STEP, code_range, integer_codes
from geta.quant.products import product_quantizers
from geta.quant.quantizer import LearnableQuantizer
from geta.reporting.count import rounded_bits

__all__ = ["SATURATION_FREE_CODE", "deployable", "encode_weight_codes"]

SATURATION_FREE_CODE = 63  # |k| <= 63: 2·255·|k| fits a signed int16 (u8s8 kernels stay exact)
_EXPORT_INPUT_ATTR = "geta_export_input"  # submodule name of a layer's export-time input QDQ


def _symbolic_qdq(x: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """ONNX QuantizeLinear → DequantizeLinear (only while exporting)."""
    q = torch.onnx.ops.symbolic(
        "QuantizeLinear", (x, scale, zero_point), dtype=zero_point.dtype, shape=x.shape
    )
    return torch.onnx.ops.symbolic("DequantizeLinear", (q, scale, zero_point), dtype=x.dtype, shape=x.shape)


def encode_weight_codes(
    codes: Tensor, *, signed: bool, saturation_safe: bool = True
) -> tuple[Tensor, int, str]:
    """(stored codes, zero point, encoding name) of integer codes of at most 8 bits.

    >>> stored, zp, enc = encode_weight_codes(torch.tensor([-100, 0, 127]), signed=True)
    >>> stored.tolist(), zp, enc
    ([28, 128, 255], 128, 'uint8')
    >>> encode_weight_codes(torch.tensor([-7, 7]), signed=True)[1:]
    (0, 'int8')
    """
    if not signed:
        return codes.to(torch.uint8), 0, "uint8"
    if saturation_safe and codes.numel() and int(codes.abs().max()) > SATURATION_FREE_CODE:
        return (codes + 128).to(torch.uint8), 128, "uint8"
    return codes.to(torch.int8), 0, "int8"


class _DequantizedWeight(nn.Module):
    """Parametrization W = (codes - zero_point) · scale; ONNX: an int initializer + DequantizeLinear.

    ``scale`` is the learned step (0-dim), or one scale per output channel (dim 0) once a
    BatchNorm is folded in (`fold_channel_scale`).
    """

    def __init__(self, codes: Tensor, zero_point: int, scale: Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("codes", codes)
        self.register_buffer("zero_point", torch.tensor(zero_point, dtype=codes.dtype))
        self.register_buffer("scale", scale.detach().to(torch.float32).clone())
        self.out_dtype = dtype  # the weight's dtype

    @torch.no_grad()
    def fold_channel_scale(self, factor: Tensor) -> None:
        """W -> W · factor[c] per output channel c, exactly: |factor| joins the scale, its sign the codes.

        DequantizeLinear scales must be positive, so a negative factor flips the codes of its
        channel (k -> -k stays in the symmetric code range; with zero point z the stored
        k + z becomes -k + z).
        """
        out = self.codes.shape[0]
        shape = (out,) + (1,) * (self.codes.dim() - 1)
        sign = torch.where(factor < 0, -1, 1).reshape(shape)
        z = self.zero_point.to(torch.int32)
        flipped = (self.codes.to(torch.int32) - z) * sign + z
        self.codes = flipped.to(self.codes.dtype)
        self.scale = (self.scale.double() * factor.double().abs()).to(torch.float32).reshape(out)
        self.zero_point = self.zero_point.expand(out).clone()

    def forward(self, _unused: Tensor) -> Tensor:
        per_channel = self.scale.dim() == 1
        if torch.onnx.is_in_onnx_export():
            return torch.onnx.ops.symbolic(
                "DequantizeLinear", (self.codes, self.scale, self.zero_point),
                {"axis": 0} if per_channel else None, dtype=torch.float32, shape=self.codes.shape,
            ).to(self.out_dtype)  # fmt: skip
        shape = (-1,) + (1,) * (self.codes.dim() - 1) if per_channel else ()
        k = self.codes.to(torch.float32) - self.zero_point.to(torch.float32).reshape(shape)
        return (k * self.scale.reshape(shape)).to(self.out_dtype)


def _act_limits(q: LearnableQuantizer) -> tuple[int, int, bool]:
    """(b, hi, limited): rounded bits, largest code, and whether b clips below the real range."""
    b = max(rounded_bits(q), 2 if q.signed else 1)
    levels = code_range(b, q.signed)[1]
    with torch.no_grad():  # where the fake-quant clips: round(qmax**t / step), in float32 as it does
        cap = torch.round(q.qmax.clamp_min(MIN_QMAX) ** q.exponent / q.step.clamp_min(MIN_STEP))
    cap_int = int(cap)
    return b, min(levels, cap_int), cap_int > levels


class _InputQDQ(nn.Module):
    """The deployment form of an input quantizer: (power), Clip, QuantizeLinear, DequantizeLinear."""

    def __init__(self, q: LearnableQuantizer) -> None:
        super().__init__()
        self.bits, hi, self.limited = _act_limits(q)
        self.signed = q.signed
        self.power = float(q.exponent.detach()) != 1.0  # t != 1: sign(x)·min(|x|, qmax)**t before the grid
        step = q.step.detach().clamp_min(MIN_STEP).to(torch.float32)
        self.hi = hi
        self.register_buffer("scale", step.clone())
        self.register_buffer("clip_lo", -hi * step if q.signed else torch.zeros(()))
        self.register_buffer("clip_hi", hi * step)
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int8 if q.signed else torch.uint8))
        self.register_buffer("qmax", q.qmax.detach().clamp_min(MIN_QMAX).to(torch.float32).clone())
        self.register_buffer("exponent", q.exponent.detach().to(torch.float32).clone())

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.power:
            m = torch.minimum(x.abs() if self.signed else torch.clamp(x, min=0.0), self.qmax)
            u = m**self.exponent  # u(x) = min(|x|, qmax)**t
            y = torch.sign(x) * u if self.signed else u
        if not torch.onnx.is_in_onnx_export():  # the grid in float32 (or float64), as the fake-quant
            yc = torch.clamp(y.to(torch.promote_types(y.dtype, torch.float32)), self.clip_lo, self.clip_hi)
            return (torch.round(yc / self.scale) * self.scale).to(x.dtype)
        lo, hi, scale = (t.to(y.dtype) for t in (self.clip_lo, self.clip_hi, self.scale))
        # An explicit Clip with initializer bounds: torch.clamp would be exported as Max/Min,
        # which the onnxscript optimizer (0.7) re-fuses into Clips with dangling bounds when a
        # tensor feeds two quantized layers (a residual block's body and shortcut).
        y = torch.onnx.ops.symbolic("Clip", (y, lo, hi), dtype=y.dtype, shape=y.shape)
        if self.bits <= 8:
            return _symbolic_qdq(y, scale, self.zero_point)
        return torch.round(y / scale) * scale


def _apply_export_input(module: nn.Module, args: tuple[object, ...]) -> tuple[object, ...] | None:
    """Forward pre-hook: the first positional input through the layer's `_InputQDQ`, wherever it is
    passed again positionally (self-attention's ``attn(x, x, x)``), as geta's own hook does."""
    qdq = getattr(module, _EXPORT_INPUT_ATTR, None)
    if not isinstance(qdq, _InputQDQ) or not args or not isinstance(args[0], Tensor):
        return None
    x = args[0]
    y = qdq(x)
    return tuple(y if a is x else a for a in args)


def _activation_entry(name: str, kind: str, q: LearnableQuantizer, qdq: _InputQDQ) -> TensorExport:
    real = float(q.bit_width)
    return TensorExport(
        name=name, kind=kind, bits=qdq.bits,
        encoding=("int8" if q.signed else "uint8") if qdq.bits <= 8 else "float",
        zero_point=0, scale=float(qdq.scale), code_min=-qdq.hi if q.signed else 0, code_max=qdq.hi,
        limited=qdq.limited,
        note=f"real bits {real:.3f} > {qdq.bits}: inputs clip at {qdq.bits} bits" if qdq.limited else "",
    )  # fmt: skip


def _replace_input(module: nn.Module, name: str, q: LearnableQuantizer) -> TensorExport:
    qdq = _InputQDQ(q)
    delattr(module, INPUT_QUANTIZER_ATTR)  # geta's own pre-hook now passes inputs through
    module.add_module(_EXPORT_INPUT_ATTR, qdq)
    module.register_forward_pre_hook(_apply_export_input)
    return _activation_entry(f"{name}.input" if name else "input", "input", q, qdq)


def _replace_products(module: nn.Module, name: str) -> list[TensorExport]:
    """Each operand quantizer of ``module``'s activation products (attention's q·kᵀ, p·v) in QDQ form.

    The product's owner calls whatever module its slot holds (`geta.quant.products`), so the
    slot simply gets the same Clip -> QuantizeLinear -> DequantizeLinear as a layer input.
    """
    holder = product_quantizers(module)
    if holder is None:
        return []
    entries = []
    for call, position, label, q in holder.slots():
        if isinstance(q, LearnableQuantizer):
            qdq = _InputQDQ(q)
            holder.replace(call, position, qdq)
            entries.append(_activation_entry(f"{name}.{label}" if name else label, "product", q, qdq))
    return entries


class _FixedWeight(nn.Module):
    """Parametrization W = a stored float tensor (the exact fake-quantized weight above 8 bits)."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value.detach().clone())

    def forward(self, _unused: Tensor) -> Tensor:
        return self.value


def _replace_weight(
    module: nn.Module, name: str, attr: str, q: LearnableQuantizer, saturation_safe: bool
) -> TensorExport:
    """Swap the quantizer in ``module.parametrizations[attr]`` for its deployment form.

    The chain is edited in place rather than with ``remove_parametrizations``: a deep copy of a
    parametrized module shares its (dynamically created) class with the original, and removing
    a parametrization deletes the property from that shared class, breaking the original.
    """
    chain = module.parametrizations[attr]
    if len(chain) != 1:
        raise ExportError(
            f"{name}.{attr} has other parametrizations besides its geta quantizer; "
            "remove them before exporting"
        )
    original = chain.original.detach()
    b = max(rounded_bits(q), 2 if q.signed else 1)
    lo, hi = code_range(b, q.signed)
    full = integer_codes(original, q.step, q.qmax, q.exponent, signed=q.signed)
    clipped = int(((full < lo) | (full > hi)).sum())
    scale = q.step.detach().clamp_min(MIN_STEP)
    info = dict(name=f"{name}.{attr}" if name else attr, kind="weight", bits=b, scale=float(scale),
                code_min=lo, code_max=hi, clipped=clipped, limited=clipped > 0)  # fmt: skip
    chain.original = nn.Parameter(original.new_empty(0), requires_grad=False)  # no dead initializer
    if b > 8:
        with torch.no_grad():
            chain[0] = _FixedWeight(q(original))  # exactly Q(W), kept float
        return TensorExport(**info, encoding="float", zero_point=0, note="more than 8 bits: kept float")
    stored, zero_point, encoding = encode_weight_codes(full.clamp(lo, hi), signed=q.signed,
                                                       saturation_safe=saturation_safe)  # fmt: skip
    chain[0] = _DequantizedWeight(stored, zero_point, scale, original.dtype)
    note = "uint8 with zero point 128: exact u8u8 kernels (no u8s8 saturation)" if zero_point == 128 else ""
    if clipped:
        note = f"{clipped} codes clipped to {b} bits (real bits {q.bit_width:.3f}); " + note
    return TensorExport(**info, encoding=encoding, zero_point=zero_point, note=note)


@torch.no_grad()
def _fold_batchnorm(model: nn.Module, conv: nn.Module, bn: nn.Module) -> bool:
    """Fold eval-mode ``bn`` into ``conv`` in deployment form; False (nothing changed) if it cannot."""
    if not can_fold(conv, bn) or parametrize.is_parametrized(conv, "bias"):
        return False
    if any(isinstance(m, _InputQDQ) for m in bn.children()):
        return False  # the BatchNorm's own input is quantized: it is a layer of its own
    factor, bias = batchnorm_factors(conv.bias, bn)
    w = conv.weight
    shape = (-1,) + (1,) * (w.dim() - 1)  # (out, 1, 1, ...)
    if parametrize.is_parametrized(conv, "weight"):
        form = conv.parametrizations.weight[0]
        if isinstance(form, _DequantizedWeight):
            form.fold_channel_scale(factor)
        elif isinstance(form, _FixedWeight):
            form.value = (form.value.double() * factor.reshape(shape)).to(form.value.dtype)
        else:
            return False
    else:
        conv.weight = nn.Parameter((w.double() * factor.reshape(shape)).to(w.dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(w.dtype), requires_grad=False)
    replace_by_identity(model, bn)
    return True


def deployable(
    model: nn.Module,
    example_inputs: object = None,
    *,
    saturation_safe: bool = True,
    fold_batchnorm: bool = False,
) -> tuple[nn.Module, list[TensorExport]]:
    """A deep copy of ``model`` (eval mode) with every geta quantizer in deployment (QDQ) form.

    The copy computes the same outputs as ``model`` in torch (exactly, up to float rounding,
    when every quantizer's real bit width rounds *up* or is already an integer, e.g. after
    QASSO's cool-down); the returned `TensorExport` list says how each tensor was encoded and
    which, if any, are limited by rounding their bits down. ``model`` is not modified.

    ``fold_batchnorm`` (needs ``example_inputs`` to find the pairs, `geta.export.bake`): each
    eval-mode BatchNorm that directly follows a convolution is folded into it, exactly: the
    integer codes stay, the DequantizeLinear gets one scale per output channel,
    step·|γ|/√(σ²+ε) (a negative factor flips its channel's codes), and the bias becomes
    (b - μ)·γ/√(σ²+ε) + β. Why: onnxruntime cannot fold a BatchNorm into a convolution whose
    weight is computed (DequantizeLinear), and its integer convolution (QLinearConv) needs the
    convolution's output to reach the next QuantizeLinear without a BatchNorm in between.
    """
    new = copy.deepcopy(model).eval()
    pairs = conv_bn_pairs(new, example_inputs) if fold_batchnorm and example_inputs is not None else []
    tensors: list[TensorExport] = []
    weight_entry: dict[int, int] = {}  # id(conv) -> index of its weight in ``tensors``
    for name, module in list(new.named_modules()):
        for attr, q in weight_quantizers(module).items():
            weight_entry[id(module)] = len(tensors) if attr == "weight" else -1
            tensors.append(_replace_weight(module, name, attr, q, saturation_safe))
        q_in = input_quantizer(module)
        if q_in is not None:
            tensors.append(_replace_input(module, name, q_in))
        tensors += _replace_products(module, name)
    left = [n for n, m in new.named_modules() if isinstance(m, LearnableQuantizer)]
    if left:
        raise ExportError(
            f"quantizers not attached by geta (not a weight parametrization or a layer input): {left}; "
            "attach them with geta.quant.attach so that export can convert them"
        )
    for conv, bn in pairs:
        i = weight_entry.get(id(conv), -1)
        if _fold_batchnorm(new, conv, bn) and i >= 0:
            t = tensors[i]
            note = "BatchNorm folded in: per-channel scales step·|γ|/√(σ²+ε)"
            tensors[i] = dataclasses.replace(t, note=f"{t.note}; {note}" if t.note else note)
    return new, tensors
