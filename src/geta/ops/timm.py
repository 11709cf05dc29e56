"""timm knowledge: module fixers of timm's attention classes (loaded once timm is imported).

timm's attention modules view their q/k/v projections as ``(..., self.num_heads, head_dim)``; the
graph sees the head count as a constant. Once heads are pruned, ``convert`` must update it,
or the model's own reshape fails (the trial conversion then freezes the heads instead). Each
fixer reads the surviving head count from a pruned tensor of the module. Attention that
reshapes its output by the *input* width (``reshape(B, N, C)`` with ``C`` from ``x.shape``:
PVT-v2's, CaiT's) cannot follow pruned heads; its heads stay frozen by the trial conversion.

Classes are imported from timm once the user has imported it (``import timm`` imports them all),
then registered by type (`geta.ops.modules.register_module_spec`).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from geta.ops.modules import ModuleSpec, is_registered, register_module_spec

__all__ = ["register_loaded_classes"]


def _vit_attention(mod: nn.Module) -> None:
    """timm.layers.Attention (ViT, DeiT, ...): reshapes by ``num_heads`` and ``attn_dim``."""
    mod.num_heads = mod.proj.weight.shape[1] // mod.head_dim
    mod.attn_dim = mod.num_heads * mod.head_dim


def _window_attention(mod: nn.Module) -> None:
    """Swin's window attention: one column of the relative position bias table per head."""
    mod.num_heads = mod.relative_position_bias_table.shape[1]


def _specs() -> Iterator[ModuleSpec]:
    """The specs of timm's attention classes (timm is imported: `load_library_knowledge`).

    A timm release without one of them (older ones kept ``Attention`` elsewhere) skips it.
    """
    try:
        from timm.layers.attention import Attention
    except ImportError:
        pass
    else:
        yield ModuleSpec(Attention, fixer=_vit_attention)
    try:
        from timm.models.swin_transformer import WindowAttention
    except ImportError:
        pass
    else:
        yield ModuleSpec(WindowAttention, fixer=_window_attention)


def register_loaded_classes() -> None:
    """Register the specs above (once)."""
    for spec in _specs():
        if not is_registered(spec.cls):
            register_module_spec(spec)
