"""A pruned Llama / Qwen2 / Mistral as llama.cpp's tensors: names, padding, rotary order, codes.

`decoder_tensors(lm)` reads a transformers ``*ForCausalLM`` (dense, or converted by geta) and
returns what a GGUF file holds for it: every tensor under its llama.cpp name, quantized weights
as their integer codes and step, the rest as float32, plus the hyper-parameters llama.cpp
builds the graph from.

**Uniform layers.** llama.cpp reads one head count and one feed-forward width for all
blocks, so every decoder layer must keep the same sizes (``Config(uniform_layers=True)``,
``geta compress --uniform-layers``); otherwise `ExportError` names the per-layer sizes.

**Padding with zero units** (exact). The quantized types store rows in blocks of 32 values,
along a weight's input dimension. Two inputs are pruned: ``ffn_down`` reads the MLP's units and
``attn_output`` reads the concatenated heads. A width that is not a multiple of 32 is padded:

- MLP: zero rows appended to ``ffn_gate`` and ``ffn_up`` and zero columns to ``ffn_down``.
  A padded unit computes silu(0)·0 = 0 and its (zero) output column adds nothing.
- Heads: zero query heads (rows of ``attn_q`` and its bias, columns of ``attn_output``), and,
  where the grouped-query ratio must stay whole, zero key/value heads at the end. A padded
  head attends with zero scores to zero values and its output columns are zero. Query heads
  are placed so that each real one still reads its own key/value head: with r query heads
  per kv head before and r' ≥ r after, query head h goes to slot (h // r)·r' + h % r.
  Qwen2's graph in llama.cpp needs heads·head_dim equal to the hidden size, so there the
  heads are padded back to the hidden size's count.

The hidden size and head_dim are never pruned (`geta.export.layersizes`), so the norms (over the
hidden channels) need no padding; the hidden size must itself be a multiple of 32 for the
quantized types.

**Rotary order.** llama.cpp's ``llama`` architecture rotates adjacent pairs of a head's
dimensions, while transformers rotates the first half against the second, so the rows of
``attn_q`` / ``attn_k`` are reordered per head (pair i of head h: rows i and i + head_dim/2 of
transformers become rows 2i and 2i+1). Qwen2 rotates halves in llama.cpp too: no reorder.
Row reordering moves whole rows and leaves the codes of each row as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from geta.export.ggml_blocks import BLOCK
from geta.export.info import ExportError
from geta.quant.attach import weight_quantizers
from geta.quant.functional import integer_codes

__all__ = ["ARCHITECTURES", "Hparams", "Weight", "causal_lm", "decoder_tensors"]

ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
"""transformers ``model_type`` -> llama.cpp architecture name."""


@dataclass
class Weight:
    """One GGUF tensor: float32 ``values``, or integer codes with their ``step`` (W = codes·step)."""

    name: str
    values: np.ndarray
    step: float | None = None
    bits: float | None = None  # geta's bit width of a quantized weight


@dataclass
class Hparams:
    """What llama.cpp builds the graph from (padded sizes), and the pruned sizes behind them."""

    arch: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    context: int
    rms_eps: float
    rope_theta: float
    vocab: int
    pruned: dict[str, int] = field(default_factory=dict)  # heads, kv_heads, ffn as geta kept them


def causal_lm(model: nn.Module) -> Any:
    """The Llama/Qwen2/Mistral ``*ForCausalLM`` in ``model`` (itself, or the one a recipe wraps)."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "model_type", None) in ARCHITECTURES and hasattr(module, "lm_head"):
            return module
    kinds = sorted({getattr(getattr(m, "config", None), "model_type", "") for m in model.modules()} - {""})
    raise ExportError(
        f"GGUF export needs a transformers causal LM of the families {sorted(ARCHITECTURES)}; "
        f"model is {type(model).__name__}" + (f" with model_type {kinds}" if kinds else "")
    )


def _weight(module: nn.Module, name: str, attr: str = "weight") -> Weight:
    """The tensor ``module.<attr>`` as codes + step (geta-quantized) or float32 values."""
    quantizer = weight_quantizers(module).get(attr)
    value = getattr(module, attr).detach()
    if quantizer is None:
        return Weight(name, value.to(torch.float32).cpu().numpy())
    original = module.parametrizations[attr].original.detach()
    step, qmax, exponent = quantizer.step.detach(), quantizer.qmax.detach(), quantizer.exponent.detach()
    codes = integer_codes(original, step, qmax, exponent, signed=quantizer.signed)
    if not torch.equal((codes.to(value.dtype) * step.to(value.dtype)), value):
        raise ExportError(f"{name}: the weight is not its codes times its step (k·step); cannot export")
    return Weight(name, codes.cpu().numpy(), float(step), quantizer.bit_width)


def _layer_sizes(layer: nn.Module, head_dim: int) -> dict[str, int]:
    attn, mlp = layer.self_attn, layer.mlp
    return {
        "heads": attn.q_proj.weight.shape[0] // head_dim,
        "kv_heads": attn.k_proj.weight.shape[0] // head_dim,
        "ffn": mlp.up_proj.weight.shape[0],
    }


def _uniform_sizes(layers: list[nn.Module], head_dim: int) -> dict[str, int]:
    """The sizes every layer shares; `ExportError` naming the per-layer ones otherwise."""
    per_layer = [_layer_sizes(layer, head_dim) for layer in layers]
    uneven = {k: [s[k] for s in per_layer] for k in per_layer[0] if len({s[k] for s in per_layer}) > 1}
    if uneven:
        listed = "; ".join(f"{k} per layer {v}" for k, v in uneven.items())
        raise ExportError(
            f"GGUF holds one size for all layers, but the layers were pruned to different sizes ({listed}): "
            "prune with Config(uniform_layers=True) (geta compress --uniform-layers)"
        )
    return per_layer[0]


def _head_slots(arch: str, hidden: int, heads: int, kv_heads: int, head_dim: int) -> tuple[int, int]:
    """(padded kv heads, padded query heads per kv head): the fewest heads llama.cpp accepts."""
    ratio = heads // kv_heads
    if arch == "qwen2":  # llama.cpp's qwen2 graph: heads·head_dim == hidden
        total = hidden // head_dim
        kv = next((n for n in range(kv_heads, total + 1) if total % n == 0 and total // n >= ratio), None)
        if kv is None:
            raise ExportError(
                f"GGUF export: {heads} query heads over {kv_heads} key/value heads cannot be padded to "
                f"llama.cpp's qwen2 layout of {total} heads"
            )
        return kv, total // kv
    best = None
    for kv in range(kv_heads, kv_heads + BLOCK + 1):
        for r in range(ratio, ratio + BLOCK + 1):
            if (kv * r * head_dim) % BLOCK == 0 and (best is None or kv * r < best[0] * best[1]):
                best = (kv, r)
    assert best is not None  # kv·r = a multiple of 32 is always reached
    return best


def _pad_heads(a: np.ndarray, axis: int, kv: tuple[int, int], ratio: tuple[int, int], hd: int) -> np.ndarray:
    """Place ``kv[0]`` groups of ``ratio[0]`` heads (of ``hd`` along ``axis``) into a zero array of
    ``kv[1]`` groups of ``ratio[1]`` heads: query head h goes to slot (h // r)·r' + h % r."""
    a = np.moveaxis(a, axis, 0)
    grouped = a.reshape(kv[0], ratio[0], hd, *a.shape[1:])
    out = np.zeros((kv[1], ratio[1], hd, *a.shape[1:]), dtype=a.dtype)
    out[: kv[0], : ratio[0]] = grouped
    return np.moveaxis(out.reshape(kv[1] * ratio[1] * hd, *a.shape[1:]), 0, axis)


def _pad_axis(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, size - a.shape[axis])
    return np.pad(a, widths)


def _rope_pairs(a: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from transformers' half/half order to llama.cpp's adjacent pairs."""
    shape = a.shape
    return a.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise ExportError(f"GGUF export: rope scaling {kind!r} is not supported (only the default rotary)")
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _hparams(lm: Any, arch: str, sizes: dict[str, int], head_dim: int) -> Hparams:
    config = lm.config
    context = int(config.max_position_embeddings)
    window = getattr(config, "sliding_window", None) if config.model_type == "mistral" else None
    if window:  # llama.cpp's llama graph has no sliding window: it is exact up to the window
        context = min(context, int(window))
    hidden = int(lm.model.embed_tokens.weight.shape[1])
    if hidden % BLOCK:
        raise ExportError(f"GGUF export: hidden size {hidden} is not a multiple of {BLOCK} (ggml's block)")
    kv, ratio = _head_slots(arch, hidden, sizes["heads"], sizes["kv_heads"], head_dim)
    return Hparams(
        arch=arch, layers=len(lm.model.layers), hidden=hidden, heads=kv * ratio, kv_heads=kv,
        head_dim=head_dim, ffn=math.ceil(sizes["ffn"] / BLOCK) * BLOCK, context=context,
        rms_eps=float(config.rms_norm_eps), rope_theta=_rope_theta(config),
        vocab=int(lm.lm_head.weight.shape[0]), pruned=dict(sizes),
    )  # fmt: skip


def _attention(layer: nn.Module, i: int, hp: Hparams) -> list[Weight]:
    """attn_q/k/v (+ biases) and attn_output of block i, heads padded and rotary-reordered."""
    attn, hd = layer.self_attn, hp.head_dim
    kv = (hp.pruned["kv_heads"], hp.kv_heads)
    ratio = (hp.pruned["heads"] // hp.pruned["kv_heads"], hp.heads // hp.kv_heads)
    found = []
    for proj, short in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")):
        for attr in ("weight", "bias"):
            if getattr(getattr(attn, proj), attr, None) is None:
                continue
            w = _weight(getattr(attn, proj), f"blk.{i}.attn_{short}.{attr}", attr)
            w.values = _pad_heads(w.values, 0, kv, ratio if short == "q" else (1, 1), hd)
            if hp.arch == "llama" and short in "qk":
                w.values = _rope_pairs(w.values, hp.heads if short == "q" else hp.kv_heads)
            found.append(w)
    out = _weight(attn.o_proj, f"blk.{i}.attn_output.weight")
    out.values = _pad_heads(out.values, 1, kv, ratio, hd)
    found.append(out)
    if getattr(attn.o_proj, "bias", None) is not None:
        found.append(_weight(attn.o_proj, f"blk.{i}.attn_output.bias", "bias"))
    return found


def _mlp(layer: nn.Module, i: int, hp: Hparams) -> list[Weight]:
    """ffn_gate/up/down of block i, the units padded to a multiple of 32."""
    found = []
    for proj, short, axis in (("gate_proj", "gate", 0), ("up_proj", "up", 0), ("down_proj", "down", 1)):
        module = getattr(layer.mlp, proj)
        w = _weight(module, f"blk.{i}.ffn_{short}.weight")
        w.values = _pad_axis(w.values, axis, hp.ffn)
        found.append(w)
        if getattr(module, "bias", None) is not None:
            b = _weight(module, f"blk.{i}.ffn_{short}.bias", "bias")
            b.values = _pad_axis(b.values, 0, hp.ffn) if axis == 0 else b.values
            found.append(b)
    return found


def decoder_tensors(model: nn.Module) -> tuple[list[Weight], Hparams]:
    """Every tensor of the causal LM in ``model`` under its llama.cpp name, and the hparams."""
    lm = causal_lm(model)
    arch = ARCHITECTURES[lm.config.model_type]
    layers = list(lm.model.layers)
    head_dim = int(layers[0].self_attn.head_dim)
    hp = _hparams(lm, arch, _uniform_sizes(layers, head_dim), head_dim)
    tensors = [_weight(lm.model.embed_tokens, "token_embd.weight")]
    for i, layer in enumerate(layers):
        tensors.append(_weight(layer.input_layernorm, f"blk.{i}.attn_norm.weight"))
        tensors += _attention(layer, i, hp)
        tensors.append(_weight(layer.post_attention_layernorm, f"blk.{i}.ffn_norm.weight"))
        tensors += _mlp(layer, i, hp)
    tensors.append(_weight(lm.model.norm, "output_norm.weight"))
    head = _weight(lm.lm_head, "output.weight")
    embed = tensors[0]
    tied = head.step is None and embed.step is None and np.array_equal(head.values, embed.values)
    if not tied:  # llama.cpp reads token_embd as the output when output.weight is absent
        tensors.append(head)
    return tensors, hp
