"""Layer sizes of a pruned transformer as one global HF config (what plain ``from_pretrained`` needs).

A Hugging Face config holds one ``intermediate_size`` and one ``num_attention_heads`` /
``num_key_value_heads`` for all decoder layers. After `geta.convert` a layer keeps the MLP units
and heads its groups kept, so only a model pruned alike in every layer
(``Config(uniform_layers=True)``) fits such a config. `global_sizes` reads every decoder
layer's sizes, checks they agree and returns the config fields that say them:

- ``intermediate_size``: rows of ``mlp.up_proj`` (Llama, Qwen2, Mistral, ...);
- ``num_attention_heads`` / ``num_key_value_heads``: rows of ``q_proj`` / ``k_proj`` over
  ``head_dim``; ``head_dim`` itself is written out, since HF would otherwise derive it as
  ``hidden_size // num_attention_heads`` (a kv head is pruned with its query heads, so the
  grouped-query ratio stays whole);
- ``n_inner``: columns of GPT-2's ``mlp.c_fc`` (GPT-2's config cannot say fewer heads of the
  same width: its ``head_dim`` is ``n_embd // n_head``).

The hidden size (residual stream) and ``head_dim`` are never pruned in these families: the
norms reduce over the hidden channels and rotary positions fix the head width, so geta marks
those groups unprunable. Whatever else differs from a model built from the updated config is
caught by `geta.export.pretrained`, which names the tensors.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from geta.export.info import ExportError
from geta.ops.modules import out_width

__all__ = ["check_plain_shapes", "global_sizes", "set_global_sizes"]


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a HF transformer (``layers`` of Llama-style models, ``h`` of GPT-2)."""
    base = getattr(model, "base_model", model)
    for attr in ("layers", "h"):
        blocks = getattr(base, attr, None)
        if isinstance(blocks, nn.ModuleList):
            return list(blocks)
    return []


def _layer_sizes(layer: nn.Module) -> dict[str, int]:
    """Config field -> this layer's value, for the sizes geta prunes.

    A projection's width is its output units (`geta.ops.modules.out_width`: the module spec says
    which weight dim holds them).
    """
    sizes: dict[str, int] = {}
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    up = out_width(getattr(mlp, "up_proj", None))  # a Linear's out_features
    if up is not None:
        sizes["intermediate_size"] = up
    fc = out_width(getattr(mlp, "c_fc", None))  # GPT-2's Conv1D: weight (in, out)
    if fc is not None and getattr(layer, "attn", None) is not None:
        sizes["n_inner"] = fc
    q, k = out_width(getattr(attn, "q_proj", None)), out_width(getattr(attn, "k_proj", None))
    head_dim = getattr(attn, "head_dim", None)
    if q is not None and k is not None and isinstance(head_dim, int):
        sizes["head_dim"] = head_dim
        sizes["num_attention_heads"] = q // head_dim  # q: heads * head_dim outputs
        sizes["num_key_value_heads"] = k // head_dim
    return sizes


def global_sizes(model: nn.Module) -> dict[str, int]:
    """The config fields that describe every decoder layer of ``model`` at once.

    Raises `ExportError` when the layers differ (the model was not pruned alike in every layer),
    naming the fields, their per-layer values and the fix.
    """
    per_layer: dict[str, list[int]] = {}
    for layer in _decoder_layers(model):
        for name, value in _layer_sizes(layer).items():
            per_layer.setdefault(name, []).append(value)
    uneven = {name: values for name, values in per_layer.items() if len(set(values)) > 1}
    if uneven:
        listed = "; ".join(f"{name} per layer {values}" for name, values in uneven.items())
        raise ExportError(
            f"the layers were pruned to different sizes ({listed}), which one HF config cannot "
            "describe: prune with Config(uniform_layers=True) (geta compress --uniform-layers) for a "
            "folder plain transformers loads, or export without plain=True and load it with "
            "geta.export.load_pretrained"
        )
    return {name: values[0] for name, values in per_layer.items()}


def set_global_sizes(model: nn.Module) -> dict[str, int]:
    """Write `global_sizes` into ``model.config`` (``head_dim`` only where the family reads it
    from the config, i.e. always for Llama-style models); return the fields written."""
    sizes = global_sizes(model)
    config: Any = model.config
    for name, value in sizes.items():
        if name == "head_dim" or hasattr(config, name):
            setattr(config, name, value)
    return sizes


def check_plain_shapes(shapes: dict[str, list[int]]) -> None:
    """The config with the global sizes must build exactly the model's tensor shapes.

    ``shapes`` lists the tensors that still differ from a model built from it. (Size
    attributes that differ, such as a stale ``LlamaMLP.intermediate_size`` the forward never
    reads, are recorded for `geta.export.load_pretrained`; plain HF sets them from the config.)
    """
    if shapes:
        raise ExportError(
            f"plain=True: the HF config cannot describe the pruned shapes of {sorted(shapes)[:5]} (e.g. a "
            "pruned hidden size or head width, or a model family geta knows no config fields of); exclude "
            "those groups with Config(exclude_prune=...), or export without plain=True and load the folder "
            "with geta.export.load_pretrained"
        )
