"""Hugging Face transformers knowledge (imported only when transformers is already loaded)."""

from __future__ import annotations

import sys

from torch import nn
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
from transformers.pytorch_utils import Conv1D

from geta.ops.modules import has_module_fixer, register_layer_type, register_module_fixer

__all__ = ["register_loaded_attention_classes"]

register_layer_type(Conv1D)  # GPT-2's transposed linear: forward(x) -> addmm(b, x, W)


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
