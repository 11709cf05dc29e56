"""Activation quantizers of a Hugging Face export as JSON: the "input_quantizers" and
"product_quantizers" tables of the "geta" config field (`geta.export.pretrained`).

HF has no way to say activation quantization, so `pretrained` removes the layer-input
quantizers and those of attention's activation products from its copy of the model and
records their scalars; `load_pretrained` attaches them again with exactly those scalars.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from geta.export.info import ExportError
from geta.quant.attach import INPUT_QUANTIZER_ATTR, attach_input_quantizer, input_quantizer
from geta.quant.products import detach_product_quantizers, restore_product_quantizers
from geta.quant.quantizer import LearnableQuantizer

__all__ = ["attach_inputs", "attach_products", "drop_input_quantizers", "drop_product_quantizers"]


def _quantizer_entry(q: LearnableQuantizer) -> dict[str, Any]:
    """The JSON form of an activation quantizer: its scalars (`LearnableQuantizer.to_config`)."""
    return q.to_config(settings=False)


def _set_scalars(q: LearnableQuantizer, entry: dict[str, Any]) -> None:
    """Give ``q`` the scalars of a recorded entry."""
    saved = LearnableQuantizer.from_config(entry)
    with torch.no_grad():
        for name in LearnableQuantizer.SCALARS:
            getattr(q, name).copy_(getattr(saved, name))


def drop_input_quantizers(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Remove every layer-input quantizer (its pre-hook then passes inputs through); their table."""
    table: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        q = input_quantizer(module)
        if q is not None:
            table[name] = _quantizer_entry(q)
            delattr(module, INPUT_QUANTIZER_ATTR)
    left = [n for n, m in model.named_modules() if isinstance(m, LearnableQuantizer)]
    if left:
        raise ExportError(
            f"quantizers not attached by geta (not a weight parametrization or a layer input): {left}; "
            "attach them with geta.quant.attach so that export can convert them"
        )
    return table


def drop_product_quantizers(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Remove every activation-product quantizer (attention's q·kᵀ, p·v); their table by module.

    Each entry holds the holder's layout (`geta.quant.products`) and the scalars of each
    quantized operand slot, keyed ``"<call>.<position>"``.
    """
    table: dict[str, dict[str, Any]] = {}
    for name, module in list(model.named_modules()):
        holder = detach_product_quantizers(module)
        if holder is not None:
            scalars = {
                f"{call}.{position}": _quantizer_entry(q)
                for call, position, _, q in holder.slots()
                if isinstance(q, LearnableQuantizer)
            }
            table[name] = {"layout": holder.layout(), "quantizers": scalars}
    return table


def attach_inputs(model: nn.Module, table: dict[str, dict[str, Any]]) -> None:
    """Re-attach the recorded input quantizers with their exact scalars."""
    for name, entry in table.items():
        attach_input_quantizer(model.get_submodule(name), LearnableQuantizer.from_config(entry))


def attach_products(model: nn.Module, table: dict[str, dict[str, Any]]) -> None:
    """Re-attach the recorded product quantizers with their exact scalars."""
    for name, entry in table.items():
        holder = restore_product_quantizers(model.get_submodule(name), entry["layout"])
        for call, position, _, q in holder.slots():
            saved = entry["quantizers"].get(f"{call}.{position}")
            if isinstance(q, LearnableQuantizer) and saved is not None:
                _set_scalars(q, saved)
