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
  ``geta.export.load_pretrained(path)``, and writes nothing;
- inside ``Trainer``'s own periodic checkpointing (``checkpoint-N/``, written for
  ``resume_from_checkpoint``) it writes the training state as it is — every tensor of the live
  model under its own name, so that a resumed run continues bit for bit — and marks the folder's
  ``config.json`` as a geta training checkpoint (``model_type`` `TRAINING_CHECKPOINT`), which
  ``AutoModel*.from_pretrained`` refuses by name instead of loading other weights.

The attribute is a plain picklable object (the model pickles and deep-copies with it) and is
the only place that reaches up to `geta.export`, lazily, at call time.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from typing import Any

from torch import nn

from geta.quant.quantizer import LearnableQuantizer

__all__ = ["SavePretrained", "TRAINING_CHECKPOINT", "guard_save_pretrained"]

TRAINING_CHECKPOINT = "geta_training_checkpoint"  # config.json model_type of Trainer's checkpoint-N/

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
        if _inside_trainer_checkpoint():
            self._training_checkpoint(save_directory, *args, is_main_process=is_main_process, **kwargs)
            return
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

    def _training_checkpoint(
        self, save_directory: str | os.PathLike[str], *args: Any, is_main_process: bool = True, **kwargs: Any
    ) -> None:
        """Trainer's ``checkpoint-N/``: the live tensors for ``resume_from_checkpoint``, marked as such."""
        type(self.model).save_pretrained(
            self.model, save_directory, *args, is_main_process=is_main_process, **kwargs
        )
        if not is_main_process:
            return
        path = os.path.join(os.fspath(save_directory), "config.json")
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        config["geta"] = {
            "training_checkpoint": True,
            "model_type": config.get("model_type"),
            "note": "a geta model mid-training, for Trainer(resume_from_checkpoint=...) only; " + FIX,
        }
        config["model_type"] = TRAINING_CHECKPOINT
        config.pop("architectures", None)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)


def _inside_trainer_checkpoint() -> bool:
    """Whether ``transformers.Trainer._save_checkpoint`` is on the call stack (periodic checkpoints)."""
    transformers = sys.modules.get("transformers")
    trainer = getattr(transformers, "Trainer", None) if transformers is not None else None
    if trainer is None:
        return False
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_name == "_save_checkpoint" and isinstance(frame.f_locals.get("self"), trainer):
            return True
        frame = frame.f_back
    return False


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
