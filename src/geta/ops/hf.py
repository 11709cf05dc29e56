"""Hugging Face transformers knowledge (imported only when transformers is already loaded)."""

from __future__ import annotations

from torch import nn
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
from transformers.pytorch_utils import Conv1D

from geta.ops.modules import register_layer_type, register_module_fixer

__all__: list[str] = []

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
