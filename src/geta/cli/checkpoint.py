"""Resumable run state of ``geta compress``, written atomically into ``OUT/.checkpoint``.

The state is one file, ``state.pt``: the options, the phase and position (epoch and batch),
model and optimizer state dicts, the RNG states, the epoch history and the dense model. It
holds only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``.
Writes go to a temporary file in the same directory, are flushed to disk and then
``os.replace``-d over the previous state: a crash mid-write never leaves a torn checkpoint.

Integrity: `save_state` records, under ``"integrity"``, the SHA-256 of every tensor and one over
all the other values (`geta.integrity.structure_digests`); `load_state` checks them, so a
flipped byte is an error naming the tensor instead of a resumed run that spreads it into
``dense.pt``. (A state without the record, written before checksums, loads unchecked.) A
finished run folder lists the SHA-256 of each of its files in ``checksums.json``
(`write_run_checksums`; ``dense.pt`` per tensor too).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from geta.cli.errors import CliError
from geta.errors import IntegrityError
from geta.integrity import check_structure, structure_digests, write_sidecar

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKSUMS",
    "FORMAT",
    "atomic_save",
    "load_state",
    "save_state",
    "write_run_checksums",
    "rng_state",
    "set_rng_state",
    "state_path",
]

CHECKPOINT_DIR = ".checkpoint"
FORMAT = 1  # bump when the layout of the state changes
_REQUIRED = ("format", "options", "phase", "epoch", "batch", "history")
_INTEGRITY = "integrity"
CHECKSUMS = "checksums.json"  # a finished run's sidecar: SHA-256 of every file (geta.integrity)


def state_path(out: Path) -> Path:
    """Where the run state of output directory ``out`` lives."""
    return out / CHECKPOINT_DIR / "state.pt"


def atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file and ``os.replace`` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_state(state: dict[str, Any], path: Path) -> None:
    """`atomic_save` of a run state with the digests of its tensors and values (module docstring)."""
    digests, values = structure_digests(state)
    atomic_save({**state, _INTEGRITY: {"tensors": digests, "values": values}}, path)


def _check_integrity(state: dict[str, Any], path: Path) -> None:
    record = state.pop(_INTEGRITY, None)
    if record is None:
        return  # written before checksums
    try:
        if not isinstance(record, dict):
            raise IntegrityError(f"{path} is damaged: its integrity record is not a mapping")
        check_structure(state, record.get("tensors", {}), record.get("values", ""), where=str(path))
    except IntegrityError as exc:
        raise CliError(f"{exc}; delete {path.parent} and run without --resume to start over") from None


def write_run_checksums(folder: Path, dense_state: dict[str, torch.Tensor]) -> Path:
    """``folder/checksums.json``: the SHA-256 of every file in ``folder`` (``dense.pt`` per tensor)."""
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    files = {n: (dense_state if n == "dense.pt" else None) for n in names if n != CHECKSUMS}
    return write_sidecar(folder, CHECKSUMS, files)


def load_state(path: Path) -> dict[str, Any]:
    """Load and check a run state; a missing or corrupt file raises `CliError` with the fix."""
    if not path.is_file():
        raise CliError(f"no checkpoint to resume at {path}; run without --resume to start a new run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CliError(
            f"checkpoint {path} is corrupt or not a geta checkpoint ({type(exc).__name__}); "
            f"delete {path.parent} and run without --resume to start over"
        ) from None
    if isinstance(state, dict):
        _check_integrity(state, path)
    if not isinstance(state, dict) or any(k not in state for k in _REQUIRED):
        raise CliError(
            f"checkpoint {path} is not a geta compress checkpoint; delete {path.parent} "
            "and run without --resume"
        )
    if state["format"] != FORMAT:
        raise CliError(
            f"checkpoint {path} has format {state['format']}, this geta writes {FORMAT}; "
            "start a new run without --resume"
        )
    return state


def rng_state() -> dict[str, Any]:
    """The states of torch's CPU (and CUDA) generators and Python's ``random``."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached]
    except ImportError:
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` recorded."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
