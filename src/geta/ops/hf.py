"""Hugging Face transformers knowledge (imported only when transformers is already loaded).

Layer types and module fixers of transformers' classes, and the handlers of transformers' own
custom ops (which exist only once transformers is imported, so `geta.ops.catalog` cannot
register them).
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
from transformers.pytorch_utils import Conv1D

from geta.ops.experts import grouped_mm
from geta.ops.modules import has_module_fixer, register_layer_type, register_module_fixer
from geta.ops.registry import register_op

__all__ = ["register_loaded_attention_classes"]

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


# Attention classes whose forward reads ``self.num_heads`` (module, class): their heads become
# prunable once the head count follows the pruned q_proj. Resolved only from modules the user has
# already imported (importing every HF model family here would be slow), then keyed by class.
_HEADS_FROM_Q_PROJ = (
    ("transformers.models.opt.modeling_opt", "OPTAttention"),
    ("transformers.models.bart.modeling_bart", "BartAttention"),
)


def register_loaded_attention_classes() -> None:
    """Register the fixers of the attention classes above whose modules are loaded now."""
    for module_name, class_name in _HEADS_FROM_Q_PROJ:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type) and not has_module_fixer(cls):
            register_module_fixer(cls)(_heads_from_q_proj)
