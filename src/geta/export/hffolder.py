"""Write a Hugging Face folder by hand: config, generation config, one safetensors file, tokenizer.

``save_pretrained`` saves a model's own tensors; the integer export (`geta.export.intweights`)
saves other ones (``weight_packed``, ``weight_scale``, ``weight_shape`` instead of ``weight``),
so `write_folder` writes what ``save_pretrained`` would around them:

- ``config.json`` (with ``architectures`` set to the model's class), and
  ``generation_config.json`` for a model that generates;
- ``model.safetensors`` with ``{"format": "pt"}`` metadata; a tensor that the config ties to an
  earlier key (a tied ``lm_head``) is stored once, as ``save_pretrained`` does, and the loader
  ties it again; any other shared tensor is stored twice;
- the tokenizer's files, when one is given (``tokenizer.save_pretrained``).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["tied_keys", "write_folder"]


def tied_keys(fresh: nn.Module) -> set[str]:
    """The state_dict keys that a model built from its config ties to an earlier key."""
    seen: set[int] = set()
    later: set[str] = set()
    for key, t in fresh.state_dict(keep_vars=True).items():
        if id(t) in seen:
            later.add(key)
        seen.add(id(t))
    return later


def _storable(state: dict[str, Tensor], tied: set[str]) -> dict[str, Tensor]:
    """``state`` without the config's tied duplicates, every tensor contiguous and unshared."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, t in state.items():
        if key in tied:
            continue
        t = t.detach().cpu().contiguous()
        out[key] = t.clone() if t.data_ptr() in seen and t.numel() else t
        seen.add(out[key].data_ptr())
    return out


def write_folder(
    model: nn.Module, state: dict[str, Tensor], path: str, *, tied: set[str], tokenizer: Any = None
) -> None:
    """Write ``model``'s config (and generation config), ``state`` and ``tokenizer`` into ``path``."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    config: Any = model.config
    config.architectures = [type(model).__name__]
    config.save_pretrained(path)
    generation = getattr(model, "generation_config", None)
    can_generate = getattr(model, "can_generate", lambda: False)
    if generation is not None and can_generate():
        generation.save_pretrained(path)
    with torch.no_grad():
        save_file(_storable(state, tied), os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
