"""Run one registered exporter (`geta.export.registry`) on a run's model, with what the run knows.

Shared by ``geta export`` and the exports of ``geta compress`` (`geta.cli.outputs`), so that
both hand a format the same things, chosen by the facts it declares instead of by its name:

- ``model_kind="hf"``: the Hugging Face model inside the run's model, and the tokenizer of
  its ``hf:DIR`` checkpoint;
- ``needs_example_inputs``: the model and inputs in export form (`geta.recipes.export_form`:
  a wrapped Hugging Face model as itself, called with ``input_ids`` + ``attention_mask``);
- ``tokenizer_folder``: the folder ``--tokenizer`` (or the run) names;
- the options ``plain`` (``--uniform-layers``) and ``card`` (the run's model card) where the
  format declares them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from torch import nn

from geta.cli.hfout import checkpoint_tokenizer, model_card
from geta.cli.quiet import quiet_exporters
from geta.export.registry import Exporter
from geta.recipes import export_form

__all__ = ["hf_model", "write_format"]


def hf_model(model: nn.Module) -> nn.Module | None:
    """The outermost transformers PreTrainedModel in ``model`` (a recipe may wrap one), if any."""
    transformers = sys.modules.get("transformers")  # a model of that kind means it is loaded
    if transformers is None:
        return None
    return next((m for m in model.modules() if isinstance(m, transformers.PreTrainedModel)), None)


def write_format(
    entry: Exporter,
    model: nn.Module,
    path: Path,
    *,
    inputs: Any = None,
    report: dict[str, Any] | None = None,
    plain: bool = False,
    tokenizer_folder: Path | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Write ``model`` with ``entry``; (its info, the keywords it was called with).

    ``inputs``: the run's example inputs (positional, as the run's model takes them);
    ``report``: the run's report (its options name the checkpoint; the card shows it).
    A ``model_kind="hf"`` format needs a Hugging Face model inside ``model`` (check with
    `hf_model` first).
    """
    target, used = model, {}
    if entry.model_kind == "hf":
        target = hf_model(model)
        assert target is not None, "write_format: check hf_model(model) before an hf format"
        target = target.eval()
        spec = report["options"]["model"] if report else None
        used["tokenizer"] = checkpoint_tokenizer(spec) if spec else None
    if entry.needs_example_inputs:
        target, used["example_inputs"] = export_form(model, inputs)
    if entry.tokenizer_folder:
        used["tokenizer"] = tokenizer_folder
    context = {"plain": plain, "card": lambda folder: model_card(folder, report)}
    used.update({k: v for k, v in context.items() if k in entry.options})
    with quiet_exporters():
        info = entry.write(target, path, **used)
    return info, used
