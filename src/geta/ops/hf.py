"""Hugging Face transformers knowledge (imported only when transformers is already loaded).

Layer types and module fixers of transformers' classes, and the handlers of transformers' own
custom ops (which exist only once transformers is imported, so `geta.ops.catalog` cannot
register them).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable

import torch
from torch import nn
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
from transformers.pytorch_utils import Conv1D

from geta.ops.experts import grouped_mm
from geta.ops.modules import has_module_fixer, register_layer_type, register_module_fixer
from geta.ops.registry import register_op

__all__ = ["register_loaded_classes"]

register_layer_type(Conv1D)  # GPT-2's transposed linear: forward(x) -> addmm(b, x, W)

try:  # stacked Mixture-of-Experts weights (transformers >= 5): defines the op below
    import transformers.integrations.moe  # noqa: F401
except ImportError:
    pass
# The grouped expert matmul transformers runs where torch's grouped_mm cannot (CPU, export).
_GROUPED_MM_FALLBACK = getattr(torch.ops.transformers, "grouped_mm_fallback", None)
if _GROUPED_MM_FALLBACK is not None:
    register_op(_GROUPED_MM_FALLBACK)(grouped_mm)


@register_module_fixer(Conv1D)
def _conv1d(mod: nn.Module) -> None:
    """HF's transposed linear keeps its output width in ``nf`` (weight: (in, out))."""
    mod.nf = mod.weight.shape[1]


@register_module_fixer(GPT2Attention)
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


# Attention classes whose forward reads a head count from an attribute, and the fixer that makes
# it follow the pruned projections: (module, class, fixer). Resolved only from modules the user
# has already imported (importing every HF model family here would be slow), then keyed by class.
_ATTENTION_FIXERS: tuple[tuple[str, str, Callable[[nn.Module], None]], ...] = (
    ("transformers.models.opt.modeling_opt", "OPTAttention", _heads_from_q_proj),
    ("transformers.models.bart.modeling_bart", "BartAttention", _heads_from_q_proj),
    ("transformers.models.whisper.modeling_whisper", "WhisperAttention", _heads_from_q_proj),
    # copies of BartAttention (marked "Copied from" in transformers)
    ("transformers.models.mbart.modeling_mbart", "MBartAttention", _heads_from_q_proj),
    ("transformers.models.marian.modeling_marian", "MarianAttention", _heads_from_q_proj),
    ("transformers.models.pegasus.modeling_pegasus", "PegasusAttention", _heads_from_q_proj),
    ("transformers.models.m2m_100.modeling_m2m_100", "M2M100Attention", _heads_from_q_proj),
    ("transformers.models.blenderbot.modeling_blenderbot", "BlenderbotAttention", _heads_from_q_proj),
    ("transformers.models.t5.modeling_t5", "T5Attention", _t5_attention),
    ("transformers.models.mt5.modeling_mt5", "MT5Attention", _t5_attention),
    ("transformers.models.phi3.modeling_phi3", "Phi3Attention", _phi3_attention),
)


def register_loaded_classes() -> None:
    """Register the fixers of the attention classes above whose modules are loaded now."""
    for module_name, class_name, fixer in _ATTENTION_FIXERS:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type) and not has_module_fixer(cls):
            register_module_fixer(cls)(fixer)
