"""`RunState`: everything a ``geta compress`` checkpoint holds, as one plain record.

`CompressJob` (geta.cli.job) advances it epoch by epoch and saves it atomically
(geta.cli.checkpoint); a resumed run starts from the state it loads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from geta.cli.checkpoint import FORMAT
from geta.cli.errors import CliError
from geta.cli.options import CompressOptions

__all__ = ["RunState"]


@dataclass
class RunState:
    """Everything a checkpoint holds; `CompressJob` advances it epoch by epoch."""

    options: CompressOptions
    phase: str = "dense"  # "dense" -> "compress"
    epoch: int = 0  # completed epochs of the phase
    batch: int = 0  # completed batches of the current epoch (0 at an epoch boundary)
    partial: dict[str, Any] = field(default_factory=dict)  # EpochStats of the current epoch
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch
    dense: dict[str, Any] | None = None  # {"state": state_dict, "accuracy": .., "loss": ..}
    model: dict[str, Any] | None = None  # model state_dict at the checkpoint
    optimizer: dict[str, Any] | None = None  # optimizer state_dict at the checkpoint
    rng: dict[str, Any] | None = None
    seconds: float = 0.0  # training and evaluation time so far
    wall_seconds: float = 0.0  # wall-clock time of all processes of the run, up to the checkpoint

    def to_checkpoint(self) -> dict[str, Any]:
        return {"format": FORMAT, "options": self.options.to_dict(), "phase": self.phase,
                "epoch": self.epoch, "batch": self.batch, "partial": dict(self.partial),
                "history": list(self.history), "dense": self.dense, "model": self.model,
                "optimizer": self.optimizer, "rng": self.rng, "seconds": self.seconds,
                "wall_seconds": self.wall_seconds}  # fmt: skip

    @classmethod
    def from_checkpoint(cls, raw: dict[str, Any], path: Path) -> RunState:
        """The state of a loaded checkpoint; a missing or malformed field is one `CliError` line."""
        if not isinstance(raw.get("options"), dict):
            raise _damaged(path, "options", "must be a mapping of option: value", raw.get("options"))
        options = CompressOptions.from_mapping(raw["options"], where=lambda k: f"option {k!r} in {path}")
        missing = [k for k in _KEYS if k not in raw]
        if missing:
            raise _damaged(path, missing[0], "is missing", None)
        for key, (ok, allowed) in _CHECKS.items():
            if not ok(raw[key]):
                raise _damaged(path, key, allowed, raw[key])
        if raw["phase"] == "compress" and not _dense_ok(raw["dense"]):
            allowed = "must hold the dense model ('state', 'accuracy', 'loss')"
            raise _damaged(path, "dense", allowed, raw["dense"])
        partial = raw["partial"]
        if set(partial) - _PARTIAL or not all(_number(v) for v in partial.values()):
            raise _damaged(path, "partial", f"must map {', '.join(sorted(_PARTIAL))} to numbers", partial)
        wall = raw.get("wall_seconds", 0.0)
        if not (_number(wall) and wall >= 0):
            raise _damaged(path, "wall_seconds", "must be a number >= 0", wall)
        return cls(options, **{k: raw[k] for k in _KEYS}, wall_seconds=float(wall))


_KEYS = ("phase", "epoch", "batch", "partial", "history", "dense", "model", "optimizer", "rng", "seconds")
_PARTIAL = {"loss_sum", "hits", "count", "batches"}  # the fields of geta.recipes.EpochStats


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _optional_mapping(v: Any) -> bool:
    return v is None or isinstance(v, dict)


def _dense_ok(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and isinstance(v.get("state"), dict)
        and all(isinstance(t, torch.Tensor) for t in v["state"].values())
        and _number(v.get("accuracy"))
        and _number(v.get("loss"))
    )


def _record_ok(r: Any) -> bool:
    """One epoch record of the history: its phase and epoch, then numbers (the stage is a name)."""
    return (
        isinstance(r, dict)
        and r.get("phase") in ("dense", "compress")
        and _count(r.get("epoch"))
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool)  # (a perplexity may be inf)
            for k, v in r.items()
            if k not in ("phase", "epoch", "stage")
        )
        and isinstance(r.get("stage", ""), str)
    )


def _rng_ok(v: Any) -> bool:
    return v is None or (
        isinstance(v, dict) and isinstance(v.get("torch"), torch.Tensor) and isinstance(v.get("python"), list)
    )


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "phase": (lambda v: v in ("dense", "compress"), "must be 'dense' or 'compress'"),
    "epoch": (_count, "must be an integer >= 0"),
    "batch": (_count, "must be an integer >= 0"),
    "partial": (lambda v: isinstance(v, dict), "must be a mapping"),
    "history": (
        lambda v: isinstance(v, list) and all(_record_ok(r) for r in v),
        "must be a list of epoch records (phase, epoch, numbers)",
    ),
    "dense": (_optional_mapping, "must be a mapping or None"),
    "model": (_optional_mapping, "must be a state_dict or None"),
    "optimizer": (_optional_mapping, "must be an optimizer state_dict or None"),
    "rng": (_rng_ok, "must hold the 'torch' and 'python' random states, or be None"),
    "seconds": (lambda v: _number(v) and v >= 0, "must be a number >= 0"),
}


def _damaged(path: Path, key: str, allowed: str, value: Any) -> CliError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    got = "" if allowed == "is missing" else f", got {shown}"
    return CliError(
        f"checkpoint {path}: field {key!r} {allowed}{got}; the checkpoint is damaged: restore it, "
        "or start over with --overwrite"
    )
