"""`baked(model)`: a plain PyTorch inference module, so that pruning turns into speed in eager mode.

A converted model still computes with geta's fake-quant: every quantized weight is re-quantized
on every call (a ``parametrize`` parametrization) and every quantized layer input goes through a
`LearnableQuantizer` in a forward pre-hook. Those ops cost about as much as the pruning saves.
`baked` returns a copy in eval mode where

- each quantized **weight** is replaced by its value Q(W) = k·step, a plain ``nn.Parameter``
  (the module gets its own class back: ``nn.Linear``, not ``ParametrizedLinear``). The outputs of
  a weights-only quantized model are unchanged;
- each **activation quantizer is removed** with its hooks: layer inputs, and the operands of
  activation products such as attention's q·kᵀ where geta quantizes them. Layers then see
  float inputs, so the outputs of a model trained with activation quantization change by about
  one quantization step of those inputs: the baked model is the float model with the learned
  weights, not a simulation of integer activations (use `geta.export.onnx` for that);
- optionally (``fold_batchnorm=True``) every BatchNorm that directly follows a convolution is
  folded into that convolution's weight and bias and replaced by ``nn.Identity``:
  W' = W·γ/√(σ²+ε) per output channel, b' = (b - μ)·γ/√(σ²+ε) + β. Exact in eval mode (up to
  float rounding); the pairs are found in a ``torch.export`` graph of the model on
  ``example_inputs``, and only a convolution whose output feeds that BatchNorm alone is folded.

Low-bit kernels in plain PyTorch: on CPU, torch 2.13 has one int8 GEMM path, the deprecated
``torch.ao`` dynamic quantized ``nn.Linear`` (no convolutions). ``int8_linear=True`` uses it for
the Linear layers geta quantized to at most 8 bits, with exactly geta's integer weights; torch
then quantizes each layer's *input* on the fly with its own range, so the result approximates
the trained model (1-4 % relative on the benchmarks) — measure before deploying it, or export
the QDQ ONNX graph, whose activations use the learned grid, and run it in onnxruntime.

>>> small = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
>>> fast = baked(small, (torch.randn(1, 3, 8, 8),), fold_batchnorm=True)
>>> type(fast[1]).__name__
'Identity'
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter

import torch
from torch import nn
from torch.nn.utils import parametrize

from geta.export.info import ExportError
from geta.ops.modules import Kind, is_kind
from geta.quant.attach import detach_input_quantizer, weight_quantizers
from geta.quant.functional import MIN_STEP, code_range, integer_codes
from geta.quant.products import detach_product_quantizers
from geta.quant.quantizer import LearnableQuantizer
from geta.quant.recompute import recompute_in_forward
from geta.reporting.count import rounded_bits

__all__ = [
    "bake_weights",
    "baked",
    "batchnorm_factors",
    "can_fold",
    "conv_bn_pairs",
    "fold_batchnorms",
    "remove_activation_quantizers",
    "replace_by_identity",
    "replace_module",
]


def bake_weights(model: nn.Module) -> bool:
    """Replace every parametrized tensor by its current value, in place; True if a tie broke.

    Like ``remove_parametrizations(..., leave_parametrized=True)``, but the module's class is
    set back to its base class instead of deleting properties from the parametrized class: a
    deep copy shares that (dynamically created) class with the original model, which must keep
    working. A tie breaks when a baked original was also used elsewhere unquantized (GPT-2's
    ``lm_head`` quantized, its tied ``wte`` embedding not): the two now hold different values.
    """
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    broke = False
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        chains = dict(module.parametrizations.items())
        with torch.no_grad():
            values = {name: getattr(module, name).detach().clone() for name in chains}
        originals = {name: getattr(chain, "original", None) for name, chain in chains.items()}
        broke |= any(uses[id(t)] > 1 for t in originals.values() if t is not None)
        module.__class__ = parametrize.type_before_parametrizations(module)  # e.g. nn.Linear
        delattr(module, "parametrizations")
        for name, value in values.items():
            original = originals[name]
            if original is None or isinstance(original, nn.Parameter):  # several originals: a parameter
                grad = True if original is None else original.requires_grad
                module.register_parameter(name, nn.Parameter(value, requires_grad=grad))
            else:
                module.register_buffer(name, value)
    return broke


def remove_activation_quantizers(model: nn.Module) -> int:
    """Remove every activation quantizer with its hooks, in place; return how many modules had one.

    Layer-input quantizers (`geta.quant.attach`) and the quantizers of activation products
    such as attention's q·kᵀ and p·v: those computations then run in float. Raises
    `ExportError` if a `LearnableQuantizer` is left that geta did not attach (it cannot know
    how to remove it).
    """
    count = 0
    for module in list(model.modules()):
        had_input = detach_input_quantizer(module) is not None
        count += int(detach_product_quantizers(module) is not None or had_input)
    left = [n for n, m in model.named_modules() if isinstance(m, LearnableQuantizer)]
    if left:
        raise ExportError(
            f"quantizers not attached by geta (not a weight parametrization or a layer input): {left}; "
            "attach them with geta.quant.attach so that export can convert them"
        )
    return count


def _module_path(node: torch.fx.Node) -> str | None:
    """The path of the innermost module that produced ``node`` (``nn_module_stack``), or None."""
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else None


def conv_bn_pairs(model: nn.Module, example_inputs: object) -> list[tuple[nn.Module, nn.Module]]:
    """(conv, bn) module pairs where the BatchNorm reads the convolution's output, and nothing else does.

    Convolutions and BatchNorms are the modules whose `geta.ops.modules.ModuleSpec` says so
    (``Kind.CONV``, ``Kind.BATCHNORM``).

    Both modules must be called exactly once (one node each in the exported graph): a shared
    convolution or BatchNorm cannot be folded for one of its uses only.
    """
    from geta.graph.capture import normalize_inputs

    if not any(is_kind(m, Kind.BATCHNORM) for m in model.modules()):
        return []  # nothing to fold: skip the trace
    args, kwargs = normalize_inputs(example_inputs)
    with torch.no_grad():
        graph = torch.export.export(model, args, kwargs=kwargs, strict=False).graph
    modules = dict(model.named_modules())
    nodes = [n for n in graph.nodes if n.op == "call_function"]
    calls = Counter(_module_path(n) for n in nodes)
    pairs = []
    for node in nodes:
        bn = modules.get(_module_path(node) or "")
        if bn is None or not is_kind(bn, Kind.BATCHNORM) or calls[_module_path(node)] != 1 or not node.args:
            continue
        source = node.args[0]
        if not isinstance(source, torch.fx.Node) or len(source.users) != 1:
            continue
        conv = modules.get(_module_path(source) or "")
        if conv is not None and is_kind(conv, Kind.CONV) and calls[_module_path(source)] == 1:
            pairs.append((conv, bn))
    return pairs


@torch.no_grad()
def batchnorm_factors(conv_bias: torch.Tensor | None, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, bias) in float64 such that bn(conv(x)) = conv_with(W·scale, bias)(x), eval mode.

    scale = γ/√(σ²+ε) per output channel; bias = (b - μ)·scale + β (b = 0 without a conv bias).

    >>> bn = nn.BatchNorm1d(2).eval()
    >>> with torch.no_grad():
    ...     _ = bn.running_var.fill_(4.0), bn.running_mean.fill_(1.0), bn.weight.fill_(2.0)
    >>> scale, bias = batchnorm_factors(None, bn)
    >>> [round(v, 4) for v in scale.tolist()], [round(v, 4) for v in bias.tolist()]
    ([1.0, 1.0], [-1.0, -1.0])
    """
    scale = bn.running_var.double().add(bn.eps).rsqrt()  # 1/√(σ²+ε), (out,)
    if bn.weight is not None:
        scale = scale * bn.weight.double()  # γ/√(σ²+ε)
    bias = conv_bias.double() if conv_bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.double()) * scale
    if bn.bias is not None:
        bias = bias + bn.bias.double()
    return scale, bias


def can_fold(conv: nn.Module, bn: nn.Module) -> bool:
    """Whether eval-mode ``bn`` has running statistics for exactly ``conv``'s output channels."""
    return bn.running_mean is not None and bn.running_var is not None and bn.num_features == conv.out_channels


@torch.no_grad()
def _fold(conv: nn.Module, bn: nn.Module) -> None:
    """Fold eval-mode ``bn`` into ``conv`` (computed in float64, stored in the weight's dtype)."""
    w = conv.weight
    scale, bias = batchnorm_factors(conv.bias, bn)
    shape = (-1,) + (1,) * (w.dim() - 1)  # (out, 1, 1, ...): one factor per output channel
    conv.weight = nn.Parameter((w.double() * scale.reshape(shape)).to(w.dtype), requires_grad=w.requires_grad)
    conv.bias = nn.Parameter(bias.to(w.dtype), requires_grad=w.requires_grad)


def replace_module(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` (in ``old``'s train/eval mode) wherever ``old`` is a child in ``model``."""
    new.train(old.training)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child is old:
                setattr(parent, name, new)


def replace_by_identity(model: nn.Module, module: nn.Module) -> None:
    """Put an ``nn.Identity`` where ``module`` is a child in ``model``."""
    replace_module(model, module, nn.Identity())


def fold_batchnorms(model: nn.Module, example_inputs: object) -> int:
    """Fold every BatchNorm that directly follows a convolution into it, in place; return how many.

    ``model`` must be in eval mode and free of parametrizations on the folded convolutions
    (call `bake_weights` first). Each folded BatchNorm is replaced by ``nn.Identity`` in its
    parent, so the model's own ``forward`` keeps working.
    """
    if any(m.training for m in model.modules()):
        raise ExportError(
            "fold_batchnorms needs a model in eval mode: training BatchNorm uses batch statistics"
        )
    folded = 0
    for conv, bn in conv_bn_pairs(model, example_inputs):
        if parametrize.is_parametrized(conv) or not can_fold(conv, bn):
            continue
        _fold(conv, bn)
        replace_by_identity(model, bn)
        folded += 1
    return folded


def _int8_codes(model: nn.Module) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """nn.Linear layers whose geta weight quantizer has at most 8 bits -> (int8 codes k, step)."""
    found = {}
    for module in model.modules():
        q = weight_quantizers(module).get("weight")
        if q is None or not isinstance(module, nn.Linear) or not q.signed:
            continue
        b = max(rounded_bits(q), 2)
        if b > 8:
            continue
        lo, hi = code_range(b, q.signed)
        original = module.parametrizations.weight.original.detach()
        k = integer_codes(original, q.step, q.qmax, q.exponent, signed=q.signed).clamp(lo, hi)
        found[module] = (k.to(torch.int8), q.step.detach().clamp_min(MIN_STEP).float())
    return found


def _dynamic_int8_linear(module: nn.Module, codes: torch.Tensor, step: torch.Tensor) -> nn.Module:
    """torch.ao's dynamically quantized int8 Linear with exactly geta's codes (scale = step)."""
    try:
        with warnings.catch_warnings():  # the torch.ao API is deprecated: it warns on use
            warnings.simplefilter("ignore")
            from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

            layer = DynamicInt8Linear(module.in_features, module.out_features, module.bias is not None)
            weight = torch.quantize_per_tensor(codes.float() * step, float(step), 0, torch.qint8)
            bias = module.bias.detach().float() if module.bias is not None else None
            layer.set_weight_bias(weight, bias)
    except (ImportError, AttributeError, RuntimeError) as exc:
        raise ExportError(
            f"int8_linear needs torch.ao's dynamic quantized Linear, which this torch "
            f"({torch.__version__}) does not provide ({exc}); export to ONNX for integer kernels"
        ) from exc
    return layer


def baked(
    model: nn.Module,
    example_inputs: object = None,
    *,
    fold_batchnorm: bool = False,
    int8_linear: bool = False,
) -> nn.Module:
    """A copy of ``model`` in eval mode with weights baked and no geta quantizer left (module docstring).

    - quantized weights become plain parameters holding Q(W) (same outputs for weight-only
      quantization);
    - activation quantizers (layer inputs, attention products) are **removed**: layers see
      float inputs, so a model trained with activation quantization computes slightly
      different outputs;
    - ``fold_batchnorm``: BatchNorms that follow a convolution are folded into it (exact in eval
      mode); needs ``example_inputs`` (a tuple, or a dict of keyword inputs) to trace the model.

    - ``int8_linear`` (CPU): each ``nn.Linear`` whose geta weight quantizer has at most 8 bits
      becomes torch.ao's dynamically quantized int8 Linear holding exactly geta's integer codes
      with the learned step as scale: a real int8 GEMM (fbgemm/oneDNN). Its *inputs* are
      quantized by torch on every call with a range of their own (7-bit on x86), which geta
      did not train, so outputs differ by about 1-4 % (relative); ``torch.ao.quantization``
      is deprecated and may leave torch, and then this option raises `ExportError`. Other
      layers stay float.

    ``model`` itself is not modified; it may also be a plain float model (only folding then
    changes anything). Raises `ExportError` for quantizers geta did not attach, or for
    ``fold_batchnorm`` without ``example_inputs``.
    """
    if fold_batchnorm and example_inputs is None:
        raise ExportError(
            "baked(..., fold_batchnorm=True) needs example_inputs to find conv -> BatchNorm pairs"
        )
    new = copy.deepcopy(model).eval()
    int8 = _int8_codes(new) if int8_linear else {}
    bake_weights(new)
    remove_activation_quantizers(new)
    for module in new.modules():  # nothing is fake-quantized any more: no recompute hooks
        recompute_in_forward(module, on=False)
    for module, (codes, step) in int8.items():
        replace_module(new, module, _dynamic_int8_linear(module, codes, step))
    if fold_batchnorm:
        fold_batchnorms(new, example_inputs)
    return new
