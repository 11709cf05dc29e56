"""What the ``hf/`` folder of a run (and ``geta export RUN --format hf``) holds besides the model.

The folder itself is the registered ``hf`` exporter (`geta.export.formats`: integer weights
in the compressed-tensors format, pruned sizes in the config wherever the layers agree);
`geta.cli.exporting` hands it the checkpoint's tokenizer for an ``hf:DIR`` model
(`checkpoint_tokenizer`) and a model card (`model_card`, ``README.md``): the compression table
of the run, the command that made it, the bit widths stored, and how to load the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import geta
from geta.cli.options import CompressOptions
from geta.cli.progress import summary_table

__all__ = ["checkpoint_tokenizer", "command_line", "model_card"]


def command_line(options: dict[str, Any]) -> str:
    """The ``geta compress`` command of ``options`` (report.json's "options"), defaults left out."""
    defaults = CompressOptions().to_dict()
    parts = ["geta compress"]
    for key, value in options.items():
        if key not in ("model", "data") and (key not in defaults or value == defaults[key]):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts += [flag] if value else []
        elif value is None:
            parts.append(f"{flag} none")
        else:
            text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
            parts.append(f"{flag} {text}")
    return " ".join(parts) + " --out RUN"


def checkpoint_tokenizer(model_spec: str) -> Any:
    """The tokenizer of an ``hf:DIR`` checkpoint, or None (another model, or none saved)."""
    if not model_spec.startswith("hf:"):
        return None
    from geta.recipes.errors import RecipeError
    from geta.recipes.hf import open_checkpoint

    try:
        return open_checkpoint(model_spec.removeprefix("hf:")).tokenizer()
    except RecipeError:
        return None


def _bits_table(config: dict[str, Any]) -> list[str]:
    groups = config.get("quantization_config", {}).get("config_groups", {})
    rows = ["| bits | layers |", "| ---: | --- |"]
    for group in groups.values():
        names = group["targets"]
        more = f" and {len(names) - 4} more" if len(names) > 4 else ""
        shown = ", ".join(f"`{n}`" for n in names[:4]) + more
        rows.append(f"| {group['weights']['num_bits']} | {shown} |")
    return rows if groups else ["(no weight is stored as integers: every quantized weight is float)"]


def _loading(config: dict[str, Any]) -> list[str]:
    field = config.get("geta", {})
    plain = not field.get("shapes")
    acts = bool(field.get("input_quantizers") or field.get("product_quantizers"))
    lines = ["```python", "# pip install transformers compressed-tensors"]
    if plain:
        lines += ["from transformers import AutoModelForCausalLM  # or the Auto class of this architecture",
                  'model = AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")', "```", "",
                  "transformers decodes the integer weights to float on the first forward pass (its "
                  "compressed-tensors integration); geta is not needed."]  # fmt: skip
    else:
        lines += ["import geta  # pip install 'torch-geta[hf]'",
                  'model = geta.export.load_pretrained("PATH/TO/THIS/FOLDER")', "```", "",
                  "The layers were pruned to different sizes, which one transformers config cannot say: "
                  "load the folder with geta (compress with `--uniform-layers` for a folder plain "
                  "transformers loads)."]  # fmt: skip
    if acts:
        lines += ["", "The model was trained with quantized activations. Plain transformers computes "
                  "them in float; `geta.export.load_pretrained` attaches the learned activation "
                  "quantizers again."]  # fmt: skip
    return lines


def model_card(folder: Path, report: dict[str, Any] | None) -> str:
    """README.md of an ``hf/`` folder already written (its config says what is stored)."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    title = report["options"]["model"] if report else config.get("architectures", ["model"])[0]
    lines = [f"# {title}, compressed with geta {geta.__version__}", ""]
    if report:
        lines += ["## Compression", "", "```", summary_table(report), "```", "", "Made with:", "", "```",
                  command_line(report["options"]), "```", ""]  # fmt: skip
    lines += ["## Stored weights", "",
              "Quantized linear weights are integer codes with one scale per tensor, in the "
              "compressed-tensors `pack-quantized` format (`quantization_config` in config.json); "
              "everything else is float.", "", *_bits_table(config), "",
              "## Loading", "", *_loading(config)]  # fmt: skip
    return "\n".join(lines) + "\n"
