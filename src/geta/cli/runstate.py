"""`RunState`: everything a ``geta compress`` checkpoint holds, as one plain record.

`CompressJob` (geta.cli.job) advances it epoch by epoch and saves it atomically
(geta.cli.checkpoint); a resumed run starts from the state it loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        try:
            options = CompressOptions.from_mapping(raw["options"], where=lambda k: f"option {k!r} in {path}")
            keys = (
                "phase",
                "epoch",
                "batch",
                "partial",
                "history",
                "dense",
                "model",
                "optimizer",
                "rng",
                "seconds",
            )
            return cls(options, **{k: raw[k] for k in keys}, wall_seconds=float(raw.get("wall_seconds", 0.0)))
        except (KeyError, TypeError) as exc:
            raise CliError(
                f"checkpoint {path} is incomplete ({exc}); delete {path.parent} and start over"
            ) from None
