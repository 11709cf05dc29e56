"""Loading saved state into a ``geta compress`` job: a dense checkpoint, a checkpoint's fields.

Each way a file can fail to fit — missing, damaged, of another model, other shapes — is one
`CliError` line naming the flag or the checkpoint field and what to do, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import geta
from geta.cli.checkpoint import state_path
from geta.cli.errors import CliError

__all__ = ["load_dense_checkpoint", "restore"]


def _verify_beside(file: Path) -> None:
    """A ``dense.pt`` of a run is checked against the run's checksums.json (when it lists it)."""
    from geta.cli.checkpoint import CHECKSUMS
    from geta.integrity import verify_file

    def load(path: Path) -> dict[str, torch.Tensor]:
        return dict(torch.load(path, map_location="cpu", weights_only=True))

    try:
        verify_file(file.parent, file.name, CHECKSUMS, load_tensors=load)
    except geta.GetaError as exc:
        raise CliError(f"--dense-checkpoint: {exc}") from None


def load_dense_checkpoint(path: str, model: nn.Module) -> None:
    """``--dense-checkpoint``: a state_dict of this model, checked against its run's checksums."""
    file = Path(path).expanduser()
    fix = "pass the dense.pt of a run with the same --model and --data"
    if not file.is_file():
        raise CliError(
            f"--dense-checkpoint {file} does not exist; pass a state_dict saved with torch.save "
            "(e.g. dense.pt of an earlier run)"
        )
    _verify_beside(file)
    try:
        sd = torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # torch's message is pages long (and coloured): say what it means instead
        raise CliError(
            f"--dense-checkpoint {file} is not a state_dict file (corrupt, or a pickled object such as "
            f"compressed.pt, which is a whole module); {fix}"
        ) from None
    if isinstance(sd, dict):
        sd = sd.get("state_dict", sd.get("model", sd))
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CliError(f"--dense-checkpoint {file} holds a {type(sd).__name__}, not a state_dict; {fix}")
    mismatch = _state_dict_mismatch(model.state_dict(), sd)
    if mismatch:
        raise CliError(f"--dense-checkpoint {file} is not a state_dict of this model ({mismatch}); {fix}")
    model.load_state_dict(sd)


def restore(field: str, load: Callable[[], object], out: Path) -> None:
    """Run ``load`` (a checkpoint field into the model, optimizer or RNG); bad data is one line."""
    try:
        load()
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(
            f"checkpoint {state_path(out)}: field {field!r} does not fit this run ({first[:200]}); the "
            "checkpoint is damaged or from another model: restore it, or start over with --overwrite"
        ) from None


def _state_dict_mismatch(own: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str:
    """A short description of how ``given`` differs from ``own`` (keys, shapes); '' if it fits."""

    def few(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f", ... ({len(names)} in all)" if len(names) > 3 else "")

    missing = [k for k in own if k not in given]  # in the model's order
    unexpected = [k for k in given if k not in own]
    shapes = [f"{k} {tuple(given[k].shape)} instead of {tuple(own[k].shape)}"
              for k in own if k in given and own[k].shape != given[k].shape]  # fmt: skip
    found = (("missing", missing), ("unexpected", unexpected), ("other shapes", shapes))
    parts = [f"{label}: {few(names)}" for label, names in found if names]
    return "; ".join(parts)
