"""``save_pretrained`` on a model geta prepared or converted: a folder plain HF loads, or an error.

A Hugging Face model's own ``save_pretrained`` knows nothing of geta: it would write
parametrization keys (``...parametrizations.weight.original``) and, after `geta.convert`, the
pruned tensors under the old config, and plain ``from_pretrained`` would then load other
(randomly initialised) weights without a word. So `prepare` and `convert` give every
``PreTrainedModel`` in the model an instance attribute ``save_pretrained`` (`SavePretrained`)
that takes its place, also for ``transformers.Trainer.save_model``, which calls it:

- a model whose quantizers are all weight quantizers and whose decoder layers share one size
  is written with ``geta.export.pretrained(model, path, plain=True)``: integer weights, the
  pruned sizes in the config; plain ``from_pretrained`` loads it and computes the same logits;
- otherwise (activation quantizers, which HF cannot express, or layers of different sizes) it
  raises `geta.export.ExportError` naming the fix, ``geta.export.pretrained(model, path)`` +
  ``geta.export.load_pretrained(path)``, and writes nothing.

The attribute is a plain picklable object (the model pickles and deep-copies with it) and is
the only place that reaches up to `geta.export`, lazily, at call time.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from torch import nn

from geta.quant.quantizer import LearnableQuantizer

__all__ = ["SavePretrained", "guard_save_pretrained"]

FIX = "write it with geta.export.pretrained(model, path) and load it with geta.export.load_pretrained(path)"


def _activation_quantizers(model: nn.Module) -> list[str]:
    """Names of the quantizers that are not weight parametrizations (layer inputs, products)."""
    found = [n for n, m in model.named_modules() if isinstance(m, LearnableQuantizer)]
    return [n for n in found if ".parametrizations." not in f".{n}."]


class SavePretrained:
    """Stands in for ``model.save_pretrained`` (module docstring); extra keyword arguments are ignored.

    ``state_dict`` (passed by ``Trainer``) is ignored too: the folder is written from the
    model's own tensors, which it names.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(
        self,
        save_directory: str | os.PathLike[str],
        *args: Any,
        is_main_process: bool = True,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        export = importlib.import_module("geta.export")
        what = f"save_pretrained on a model geta prepared or converted ({type(self.model).__name__})"
        if push_to_hub:
            raise export.ExportError(f"{what}: push_to_hub=True is not supported; {FIX}, then upload it")
        act = _activation_quantizers(self.model)
        if act:
            raise export.ExportError(
                f"{what}: it quantizes activations ({len(act)} quantizers, e.g. {act[0]}), which a "
                "transformers folder cannot say, so plain from_pretrained would compute other logits; "
                f"{FIX} (with transformers.Trainer: save_strategy='no', and export after training)"
            )
        if not is_main_process:
            return
        try:
            export.pretrained(self.model, save_directory, plain=True)
        except export.ExportError as exc:
            raise export.ExportError(
                f"{what}: plain transformers could not load it ({str(exc).splitlines()[0]}); {FIX}"
            ) from None


def guard_save_pretrained(model: nn.Module) -> None:
    """Give every transformers ``PreTrainedModel`` in ``model`` a `SavePretrained` (idempotent)."""
    transformers = sys.modules.get("transformers")  # a model of that kind means it is loaded
    if transformers is None:
        return
    for module in model.modules():
        if isinstance(module, transformers.PreTrainedModel):
            current = vars(module).get("save_pretrained")
            if not (isinstance(current, SavePretrained) and current.model is module):
                module.save_pretrained = SavePretrained(module)
