"""`BitContext`: what a bit rule may read when QASSO builds it (`geta.optim.strategies`).

It sits below the rules (`geta.optim.strategies`, `geta.optim.allocation`) so that each rule can
name it without importing the registry that lists the rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from geta.optim.quantizer_table import QuantizerTable
from geta.optim.schedule import Schedule
from geta.plan import Plan

__all__ = ["BitContext"]


@dataclass(frozen=True)
class BitContext:
    """What a bit rule may read when QASSO builds it: the plan, the quantizer table, the unit
    layout, each group's expected removed units (G,) (the quota of a fixed sparsity), and
    ``broadcast`` (rank 0's value of a CPU tensor under torch.distributed, the value itself
    otherwise). For the joint allocation of widths (``plan.config.chooses_widths``): the run's
    ``schedule``, every group's ``floors`` (G,), ``kinds`` (G,) (groups that move together, or
    None) and ``min_removed`` (units the run removes at least)."""

    plan: Plan
    table: QuantizerTable
    layout: Any  # `UnitLayout` or `ShardedLayout`
    removed: Tensor
    broadcast: Callable[[Tensor], Tensor]
    schedule: Schedule | None = None
    floors: Tensor | None = None
    kinds: Tensor | None = None
    min_removed: int = 0
