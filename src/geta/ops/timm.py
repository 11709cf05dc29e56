"""timm knowledge: module fixers of timm's attention classes (loaded once timm is imported).

timm's attention modules view their q/k/v projections as ``(..., self.num_heads, head_dim)``; the
graph sees the head count as a constant. Once heads are pruned, ``convert`` must update it,
or the model's own reshape fails (the trial conversion then freezes the heads instead). Each
fixer reads the surviving head count from a pruned tensor of the module. Attention that
reshapes its output by the *input* width (``reshape(B, N, C)`` with ``C`` from ``x.shape``:
PVT-v2's, CaiT's) cannot follow pruned heads; its heads stay frozen by the trial conversion.

Classes are resolved from the timm modules already imported (``import timm`` imports them all),
then registered by type (`geta.ops.modules.register_module_fixer`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from torch import nn

from geta.ops.modules import has_module_fixer, register_module_fixer

__all__ = ["register_loaded_classes"]


def _vit_attention(mod: nn.Module) -> None:
    """timm.layers.Attention (ViT, DeiT, ...): reshapes by ``num_heads`` and ``attn_dim``."""
    mod.num_heads = mod.proj.weight.shape[1] // mod.head_dim
    mod.attn_dim = mod.num_heads * mod.head_dim


def _window_attention(mod: nn.Module) -> None:
    """Swin's window attention: one column of the relative position bias table per head."""
    mod.num_heads = mod.relative_position_bias_table.shape[1]


_FIXERS: tuple[tuple[str, str, Callable[[nn.Module], None]], ...] = (
    ("timm.layers.attention", "Attention", _vit_attention),
    ("timm.models.swin_transformer", "WindowAttention", _window_attention),
)


def register_loaded_classes() -> None:
    """Register the fixers above for the classes whose timm modules are loaded now."""
    for module_name, class_name, fixer in _FIXERS:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type) and not has_module_fixer(cls):
            register_module_fixer(cls)(fixer)
