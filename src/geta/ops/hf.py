"""Hugging Face transformers knowledge (imported only when transformers is already loaded).

The module specs (`geta.ops.modules.ModuleSpec`) of transformers' classes, and the handlers of
transformers' own custom ops (which exist only once transformers is imported, so `geta.ops.catalog` cannot
register them).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator

import torch
from torch import nn
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
from transformers.pytorch_utils import Conv1D

from geta.ops.experts import grouped_mm
from geta.ops.modules import Kind, ModuleSpec, is_registered, register_module_spec
from geta.ops.registry import register_op

__all__ = ["register_loaded_classes"]

try:  # stacked Mixture-of-Experts weights (transformers >= 5): defines the op below
    import transformers.integrations.moe  # noqa: F401
except ImportError:
    pass
# The grouped expert matmul transformers runs where torch's grouped_mm cannot (CPU, export).
_GROUPED_MM_FALLBACK = getattr(torch.ops.transformers, "grouped_mm_fallback", None)
if _GROUPED_MM_FALLBACK is not None:
    register_op(_GROUPED_MM_FALLBACK)(grouped_mm)


def _conv1d(mod: nn.Module) -> None:
    """HF's transposed linear keeps its output width in ``nf`` (weight: (in, out))."""
    mod.nf = mod.weight.shape[1]


def _conv1d_sizes(mod: nn.Module) -> None:
    mod.nx, mod.nf = mod.weight.shape  # HF's transposed linear: weight (in, out)


def _gpt2_attention(mod: nn.Module) -> None:
    """GPT-2 splits its fused q|k|v output by ``split_size``: keep it equal to the q width."""
    fused = mod.c_attn.weight.shape[1]  # (nx, 3 * heads * head_dim)
    width = fused // (2 if getattr(mod, "is_cross_attention", False) else 3)
    mod.split_size = width
    mod.num_heads = width // mod.head_dim


def _heads_from_q_proj(mod: nn.Module) -> None:
    """Attention that views q/k/v as ``(..., self.num_heads, self.head_dim)``: heads follow q_proj."""
    mod.num_heads = mod.q_proj.weight.shape[0] // mod.head_dim


def _t5_attention(mod: nn.Module) -> None:
    """T5 builds its zero position bias as ``zeros((1, self.n_heads, T, S))``: heads follow q."""
    mod.n_heads = mod.q.weight.shape[0] // mod.key_value_proj_dim
    mod.inner_dim = mod.n_heads * mod.key_value_proj_dim


def _phi3_attention(mod: nn.Module) -> None:
    """Phi-3 cuts its fused q|k|v rows at ``config.num_attention_heads * head_dim``.

    The surviving query heads are o_proj's columns; the rest of qkv_proj's rows are k and v in
    equal parts. The module gets its own copy of the config (the model's stays as it was).
    """
    heads = mod.o_proj.weight.shape[1] // mod.head_dim
    kv_heads = (mod.qkv_proj.weight.shape[0] // mod.head_dim - heads) // 2
    mod.config = copy.copy(mod.config)
    mod.config.num_attention_heads = heads
    mod.config.num_key_value_heads = kv_heads
    mod.num_key_value_heads = kv_heads
    mod.num_key_value_groups = heads // kv_heads


# GPT-2's transposed linear: forward(x) -> addmm(b, x, W)
register_module_spec(ModuleSpec(Conv1D, kind=Kind.LAYER, fixer=_conv1d, sizes=_conv1d_sizes, out_dim=1))
register_module_spec(ModuleSpec(GPT2Attention, fixer=_gpt2_attention))


def _loaded(family: str) -> bool:
    """Whether transformers' modeling module of ``family`` is imported (by the user's model)."""
    return f"transformers.models.{family}.modeling_{family}" in sys.modules


def _attention_specs() -> Iterator[ModuleSpec]:
    """Specs of attention classes whose forward reads a head count from an attribute.

    The fixer makes it follow the pruned projections. A family's class is imported only once the
    user has loaded that family (importing every HF model family here would be slow); each class
    exists in every transformers release geta supports (>= 4.45).
    """
    if _loaded("opt"):
        from transformers.models.opt.modeling_opt import OPTAttention

        yield ModuleSpec(OPTAttention, fixer=_heads_from_q_proj)
    if _loaded("bart"):
        from transformers.models.bart.modeling_bart import BartAttention

        yield ModuleSpec(BartAttention, fixer=_heads_from_q_proj)
    if _loaded("whisper"):
        from transformers.models.whisper.modeling_whisper import WhisperAttention

        yield ModuleSpec(WhisperAttention, fixer=_heads_from_q_proj)
    yield from _bart_copies()
    if _loaded("t5"):
        from transformers.models.t5.modeling_t5 import T5Attention

        yield ModuleSpec(T5Attention, fixer=_t5_attention)
    if _loaded("mt5"):
        from transformers.models.mt5.modeling_mt5 import MT5Attention

        yield ModuleSpec(MT5Attention, fixer=_t5_attention)
    if _loaded("phi3"):
        from transformers.models.phi3.modeling_phi3 import Phi3Attention

        yield ModuleSpec(Phi3Attention, fixer=_phi3_attention)


def _bart_copies() -> Iterator[ModuleSpec]:
    """Copies of BartAttention (marked "Copied from" in transformers)."""
    if _loaded("mbart"):
        from transformers.models.mbart.modeling_mbart import MBartAttention

        yield ModuleSpec(MBartAttention, fixer=_heads_from_q_proj)
    if _loaded("marian"):
        from transformers.models.marian.modeling_marian import MarianAttention

        yield ModuleSpec(MarianAttention, fixer=_heads_from_q_proj)
    if _loaded("pegasus"):
        from transformers.models.pegasus.modeling_pegasus import PegasusAttention

        yield ModuleSpec(PegasusAttention, fixer=_heads_from_q_proj)
    if _loaded("m2m_100"):
        from transformers.models.m2m_100.modeling_m2m_100 import M2M100Attention

        yield ModuleSpec(M2M100Attention, fixer=_heads_from_q_proj)
    if _loaded("blenderbot"):
        from transformers.models.blenderbot.modeling_blenderbot import BlenderbotAttention

        yield ModuleSpec(BlenderbotAttention, fixer=_heads_from_q_proj)


def register_loaded_classes() -> None:
    """Register the specs of the attention classes above whose families are loaded now."""
    for spec in _attention_specs():
        if not is_registered(spec.cls):
            register_module_spec(spec)
