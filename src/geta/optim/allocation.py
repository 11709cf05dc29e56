"""`BudgetBits`, QASSO's default bit rule ``"budget"``, and `BitAllocation`, its state over a run.

Per step (from the projection stage on, until the joint stage's first step):

1. `observe` folds the sensitivity measured during this step's backward passes
   (`FisherTracker`) into a running sum;
2. `pin` (projection and joint stages) re-allocates the bits under the BOPs budget at the
   first step of every projection period and, for good, at the joint stage's first step
   (`BitBudget.allocate`), then pins every quantizer's step to b(s): the bits descend from the
   initial bits to the allocation over the projection periods (`QuantizerTable.upper`). When a
   quantizer's pinned bits change, its clipping q_m is refitted for the new grid — weights on
   the weight (`QuantizerTable.fit_weight_ranges_`), activations on what they saw in this
   step's forward (`geta.optim.clipping`) — and then learns on by gradient.

The cool-down freezes round(bits) as in every rule (`QASSO`), which here is the allocation.
Everything a resumed run needs is in `state_dict` (bitwise resume). `BudgetBits` puts this
behind the `geta.optim.strategies.BitStrategy` hooks (registered there as ``"budget"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from geta.optim.budget import BitBudget
from geta.optim.clipping import INPUT_FRACTIONS, InputSampler, mse_clip
from geta.optim.schedule import Schedule, Stage
from geta.optim.sensitivity import FisherTracker, UnitCosts

if TYPE_CHECKING:
    from geta.optim.bit_context import BitContext

__all__ = ["BitAllocation", "BudgetBits"]


class BitAllocation:
    """Sensitivity sums, the allocated bits (n_q,) and the bits pinned now, for one run."""

    def __init__(self, context: BitContext) -> None:
        table, layout = context.table, context.layout
        self.table, self.layout = table, layout
        self.joint = context.plan.config.chooses_widths and context.floors is not None
        self.budget = BitBudget(
            context.plan, table, layout, context.removed,
            floors=context.floors if self.joint else None, kinds=context.kinds,
        )  # fmt: skip
        self._broadcast = context.broadcast  # rank 0's sensitivity under torch.distributed
        self._tracker: FisherTracker | None = FisherTracker(table.quantizers)
        inputs = {i: q for i, q in enumerate(table.quantizers) if i not in table.weights}
        self._sampler: InputSampler | None = InputSampler(inputs)  # what activations' q_m refit on
        self.targets: Tensor | None = None  # allocated bits per quantizer, (n_q,)
        self.final = False  # the joint stage's allocation was made: no more changes
        self._pinned: Tensor | None = None  # the bits every step is pinned to now, (n_q,)
        self._fisher_sum = torch.zeros(len(table), dtype=torch.float64)  # Σ steps Σ (∂L/∂Q)²
        self._fisher_steps = 0
        # the joint allocation: unit costs sampled every `_stride` steps, ~32 samples before it
        self.units = UnitCosts(layout, self.budget.weight_ids) if self.joint else None
        schedule = context.schedule
        self._stride = max(1, (schedule.warmup + schedule.projection) // 32) if schedule is not None else 1
        self._seen = 0  # steps observed
        self.min_removed = context.min_removed
        self.removed: Tensor | None = None  # units every group loses, (G,) (joint allocation)

    def observe(self) -> None:
        """Fold the sensitivity of this step's backward passes into the running sum (and, for
        the joint allocation, every `_stride`-th step the units' removal costs)."""
        if self._tracker is not None:
            self._tracker.take_into(self._fisher_sum)
            self._fisher_steps += 1
            if self.units is not None and self._seen % self._stride == 0:
                self.units.observe(self.layout)
            self._seen += 1

    def allocate(self, *, final: bool) -> Tensor:
        """Bits per quantizer from the sensitivity measured so far, under the BOPs budget."""
        fisher = self._broadcast(self._fisher_sum / max(self._fisher_steps, 1))
        rng, signed = self.table.ranges_of()
        if self.units is not None:
            costs = self._broadcast(self.units.mean())
            bits, self.removed = self.budget.allocate_joint(
                fisher, rng, signed, costs, self.layout.unit_group, self.min_removed
            )
            targets = bits.to(self.table.b_lo)
        else:
            targets = self.budget.allocate(fisher, rng, signed).to(self.table.b_lo)
        if self.targets is None or not torch.equal(targets, self.targets):
            self.targets = targets  # the same object while unchanged: `upper` keeps its cache
        if final:
            self._finish()
        return self.targets

    def pin(self, schedule: Schedule, stage: Stage, s: int) -> None:
        """(Re)allocate when due, then pin every step to the bits b(s) of its descent."""
        k = schedule.projection_period_at(s)
        # with several projection periods the bits of period 0 are the initial bits whatever the
        # allocation says, so period 0 allocates once; a single period re-allocates every step
        # (the joint allocation, which costs more, allocates once at the start of a single period)
        first = s == schedule.projection_start or (schedule.projection_periods == 1 and self.units is None)
        period_start = k is not None and (first or schedule.projection_period_at(s - 1) != k)
        if not self.final and (self.targets is None or period_start or stage is Stage.JOINT):
            self.allocate(final=stage is Stage.JOINT)
        pinned = self.table.upper(schedule, s, self.targets)
        changed = (
            torch.ones_like(pinned, dtype=torch.bool) if self._pinned is None else pinned != self._pinned
        )
        if bool(changed.any()):
            self.table.fit_weight_ranges_(pinned, changed)  # clipping follows the new bits
            self._fit_input_ranges(pinned, changed)
            self._pinned = pinned
        self.table.reset_to_(pinned)
        if self.final:
            self._drop_sampler()

    @torch.no_grad()
    def _fit_input_ranges(self, bits: Tensor, which: Tensor) -> None:
        """q_m of every activation quantizer in ``which`` to the MSE clipping of ``bits`` on the
        values it saw in this step's forward (`geta.optim.clipping`); under torch.distributed
        rank 0's fit, so that the replicated scalars stay equal."""
        if self._sampler is None:
            return
        quantizers = self.table.quantizers
        fitted = [i for i in range(len(quantizers)) if i not in self.table.weights and bool(which[i])]
        if not fitted:
            return
        qmax = torch.stack([quantizers[i].qmax.detach() for i in fitted])
        for k, i in enumerate(fitted):
            sample = self._sampler.samples.get(i)
            if sample is not None:
                qmax[k] = mse_clip(sample, bits[i], quantizers[i], INPUT_FRACTIONS)
        qmax = self._broadcast(qmax)
        for k, i in enumerate(fitted):
            quantizers[i].qmax.copy_(qmax[k])

    def _drop_sampler(self) -> None:
        """No more refits after the final allocation: detach the sampler's hooks (idempotent)."""
        if self._sampler is not None:
            self._sampler.remove()
            self._sampler = None

    def _finish(self) -> None:
        self.final = True
        if self._tracker is not None:
            self._tracker.remove()
            self._tracker = None  # (the sampler goes after the final allocation's refit, in `pin`)

    def state_dict(self) -> dict[str, Any]:
        return {
            "targets": None if self.targets is None else self.targets.clone(),
            "final": self.final,
            "pinned": None if self._pinned is None else self._pinned.clone(),
            "fisher_sum": self._fisher_sum.clone(),
            "fisher_steps": self._fisher_steps,
            "units": None if self.units is None else self.units.state_dict(),
            "seen": self._seen,
            "removed": None if self.removed is None else self.removed.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        like = self.table.b_lo
        self.targets = None if state["targets"] is None else state["targets"].to(like).clone()
        self._pinned = None if state["pinned"] is None else state["pinned"].to(like).clone()
        self._fisher_sum = state["fisher_sum"].to(torch.float64).clone()
        self._fisher_steps = int(state["fisher_steps"])
        if self.units is not None and state.get("units") is not None:
            self.units.load_state_dict(state["units"])
        self._seen = int(state.get("seen", 0))
        removed = state.get("removed")
        self.removed = None if removed is None else removed.to(torch.long).clone()
        self.final = False
        if state["final"]:
            self._finish()
            self._drop_sampler()


class BudgetBits:
    """The bit rule ``"budget"``: bits allocated by measured sensitivity under the BOPs budget
    (`BitAllocation`), every step pinned to them from the projection stage on. Without
    quantizers it does nothing (``allocation`` is None)."""

    def __init__(self, context: BitContext) -> None:
        self.allocation: BitAllocation | None = None
        if len(context.table):
            self.allocation = BitAllocation(context)

    @property
    def relative_budget(self) -> float | None:
        """The BOPs budget as a fraction of the dense FP32 model's (None without quantizers)."""
        if self.allocation is None:
            return None
        return self.allocation.budget.budget / self.allocation.budget.dense_bops

    def pins(self, stage: Stage) -> bool:
        return self.allocation is not None and stage in (Stage.PROJECTION, Stage.JOINT)

    def forget_bounds(self, schedule: Schedule, s: int) -> Tensor | None:
        return None  # the steps belong to the allocation: forgetting never writes them

    def observe(self) -> None:
        if self.allocation is not None:
            self.allocation.observe()

    def bound(self, schedule: Schedule, stage: Stage, s: int) -> None:
        if self.allocation is not None:
            self.allocation.pin(schedule, stage, s)

    def group_quotas(self) -> Tensor | None:
        """The units every group loses, (G,), when this run chooses widths (made final now,
        at the joint stage's start, if not yet); None when the widths are not this rule's."""
        alloc = self.allocation
        if alloc is None or alloc.units is None:
            return None
        if not alloc.final:
            alloc.allocate(final=True)
        return alloc.removed

    def settle(self) -> None:
        alloc = self.allocation
        if alloc is not None and alloc.targets is None:  # no projection or joint stage ran
            alloc.table.reset_to_(alloc.allocate(final=True))

    def state_dict(self) -> dict[str, Any] | None:
        return None if self.allocation is None else self.allocation.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.allocation is not None:
            self.allocation.load_state_dict(state)
