"""Loading what ``geta compress`` wrote: a converted module, its example inputs, a run directory.

``compressed.pt`` is a whole pickled module (``torch.save(module)``), so loading it runs
pickle code: load only files you trust (the same rule as ``torch.load(weights_only=False)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geta.cli.errors import CliError

__all__ = ["RunFiles", "add_checkpoint_argument", "locate", "load_module", "load_inputs", "parse_shape"]


@dataclass(frozen=True)
class RunFiles:
    """The files of one model to report or export."""

    model: Path  # a torch.save'd nn.Module
    inputs: Path | None  # a torch.save'd tuple of example inputs, if known
    run_dir: Path | None  # the ``geta compress`` output directory, if the model came from one


def add_checkpoint_argument(parser: Any) -> None:
    """The CHECKPOINT positional of ``geta report`` / ``geta export`` (resolved by `locate`)."""
    parser.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="geta compress output directory or module .pt file"
    )


def locate(path: str) -> RunFiles:
    """A run directory (``compressed.pt`` + ``inputs.pt``) or a module file (+ a sibling inputs.pt)."""
    p = Path(path).expanduser()
    if p.is_dir():
        model = p / "compressed.pt"
        if not model.is_file():
            raise CliError(
                f"{p} holds no compressed.pt; pass the --out directory of a finished "
                "geta compress run or a torch.save'd module file"
            )
        inputs = p / "inputs.pt"
        return RunFiles(model, inputs if inputs.is_file() else None, p)
    if not p.is_file():
        raise CliError(f"checkpoint {p} does not exist; pass a geta compress output directory or a .pt file")
    sibling = p.parent / "inputs.pt"
    return RunFiles(p, sibling if sibling.is_file() else None, None)


def load_module(path: Path) -> nn.Module:
    """A whole module saved with ``torch.save(module)``; a bad file raises `CliError`."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CliError(
            f"checkpoint {path} could not be loaded ({type(exc).__name__}); it must be a module saved "
            "with torch.save(model), e.g. compressed.pt of a geta compress run"
        ) from None
    if not isinstance(obj, nn.Module):
        raise CliError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a module; pass compressed.pt "
            "(a state_dict alone does not say which model it belongs to)"
        )
    return obj.eval()


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,32,32"`` -> (1, 3, 32, 32)."""
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise CliError(
            f"--input-shape {text!r} must be positive integers separated by commas, e.g. 1,3,32,32"
        )
    return shape


def load_inputs(files: RunFiles, shape: str | None, dtype: str = "float32") -> tuple[Any, ...]:
    """Example inputs: a random tensor of ``--input-shape`` if given, else the run's inputs.pt."""
    if shape is not None:
        dt = getattr(torch, dtype, None)
        if not isinstance(dt, torch.dtype):
            raise CliError(f"--input-dtype {dtype!r} is not a torch dtype; pass float32 or int64")
        size = parse_shape(shape)
        if dt.is_floating_point:
            return (torch.randn(size, dtype=dt),)
        return (torch.zeros(size, dtype=dt),)
    if files.inputs is None:
        raise CliError(
            f"no example inputs for {files.model}: pass --input-shape (e.g. 1,3,32,32) or keep the "
            "run's inputs.pt next to it"
        )
    try:
        inputs = torch.load(files.inputs, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CliError(
            f"example inputs {files.inputs} could not be loaded ({type(exc).__name__}); "
            "pass --input-shape instead"
        ) from None
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
