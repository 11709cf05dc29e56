"""The method choices of QASSO's joint stage: how rows are forgotten and how bits are learned.

The defaults are the ones the compression benchmark chose (docs/benchmarks.md, method.md §3.5);
the paper's rules stay selectable by name, for comparison and reproduction.
"""

from __future__ import annotations

import enum

__all__ = ["BitRule", "Forget"]


class Forget(enum.Enum):
    """The forget rate γ of the selected rows during a pruning period (`rules.forget_rate`)."""

    LINEAR = "linear"  # γ = 1/(T - t): rows shrink smoothly to ~1/T of their norm, then commit
    DESCENT = "descent"  # the paper's descent-safe γ (tiny on a trained model: a hard cut)


class BitRule(enum.Enum):
    """How each quantizer's bit width is chosen."""

    BUDGET = "budget"  # allocated by measured sensitivity under a BOPs budget (`optim.bits`)
    DESCENT = "descent"  # the paper: steps learned by gradient, set by the forgetting step rule
