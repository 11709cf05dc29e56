"""`BitBudget`: the BOPs cost model of a run and the bit allocation that meets its budget.

At construction it lists every multiplying op of the model with its MACs and quantizers
(`geta.reporting.count.layer_costs`, the same counting `geta.report` uses) and predicts each
op's MACs *after* pruning: the run knows how many units every group will lose (its quotas), and
a conv or linear op's MACs scale with the kept fraction of its weight's output (dim 0) and
input (dim 1) channels. Ops without a weight (activation x activation products) are counted
unpruned, so the prediction never undercounts.

The budget is ``Config.target_bops`` x the dense FP32 BOPs (32 x 32 x dense MACs), or, without
a target, the BOPs of every quantizer at the middle of its bit range. A budget the bounds cannot
meet (all quantizers at their lower bit bound, the target sparsity reached) is a `ConfigError`
at construction, never a silent miss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geta.errors import ConfigError
from geta.optim.bits import allocate_bits, bops_of
from geta.optim.layout import UnitLayout
from geta.optim.quantizers import QuantizerTable
from geta.plan import Plan
from geta.reporting.count import layer_costs
from geta.reporting.model import FP32_BITS

__all__ = ["BitBudget", "InfeasibleBudget"]


class InfeasibleBudget(ConfigError):
    """``Config.target_bops`` is below the cheapest model the bit ranges and sparsity allow.

    ``target`` is the asked fraction of the dense BOPs, ``floor`` the smallest reachable one.
    """

    def __init__(self, message: str, *, target: float, floor: float) -> None:
        super().__init__(message)
        self.target, self.floor = target, floor


def _kept_fractions(layout: UnitLayout, removed_per_group: Tensor) -> dict[tuple[int, int], float]:
    """(id(tensor), dim) -> fraction of its positions kept once every group lost its quota."""
    removed: dict[tuple[int, int], float] = {}
    size: dict[tuple[int, int], int] = {}
    for ref in layout.slices:
        key = (id(ref.tensor), ref.dim)
        group = int(layout.unit_group[ref.offset])
        removed[key] = removed.get(key, 0.0) + float(removed_per_group[group]) * ref.index.shape[1]
        size[key] = ref.tensor.shape[ref.dim]
    return {k: max(0.0, 1.0 - removed[k] / max(size[k], 1)) for k in removed}


class BitBudget:
    """Per-op cost terms (L,) of a plan, the budget, and `allocate` (bits per quantizer)."""

    def __init__(self, plan: Plan, table: QuantizerTable, layout: UnitLayout, removed: Tensor) -> None:
        if plan.example_inputs is None:
            raise ConfigError("the bit budget needs the plan's example inputs (plan.example_inputs is None)")
        # a sharded model cannot be captured: `geta.shard` keeps its terms from before sharding
        costs = plan.costs if plan.costs is not None else layer_costs(plan.model, plan.example_inputs)
        kept = _kept_fractions(layout, removed)
        macs, wq, aq, fixed_w, fixed_a = [], [], [], [], []
        for c in costs:
            factor = 1.0
            if c.weight is not None:
                for d in (0, 1):
                    factor *= kept.get((id(c.weight), d), 1.0)
            macs.append(c.macs * factor)
            wq.append(table.index_of_quantizer(c.weight_quantizer))
            aq.append(table.index_of_quantizer(c.act_quantizer))
            fixed_w.append(float(c.weight_bits))
            fixed_a.append(float(c.act_bits))
        self.macs = torch.tensor(macs, dtype=torch.float64)  # (L,) predicted after pruning
        self.wq = torch.tensor(wq, dtype=torch.long)  # (L,) weight quantizer or -1
        self.aq = torch.tensor(aq, dtype=torch.long)  # (L,) input quantizer or -1
        self.fixed_w = torch.tensor(fixed_w, dtype=torch.float64)
        self.fixed_a = torch.tensor(fixed_a, dtype=torch.float64)
        self.dense_bops = float(sum(c.macs for c in costs)) * FP32_BITS * FP32_BITS
        self.lo, self.hi = table.b_lo.double().cpu(), table.b_final.double().cpu()
        target = plan.config.target_bops
        if target is None:
            self.budget = self.bops((self.lo + self.hi) / 2)
        else:
            self.budget = float(target) * self.dense_bops
            floor = self.bops(self.lo)
            if floor > self.budget * (1 + 1e-9):
                raise InfeasibleBudget(
                    f"Config.target_bops={target} cannot be met: with every quantizer at its lower "
                    f"bit bound and target_sparsity={plan.config.target_sparsity} the model costs "
                    f"{floor / self.dense_bops:.6f} of the dense BOPs; raise target_bops, lower the "
                    "bit ranges' lower ends or raise target_sparsity",
                    target=float(target),
                    floor=floor / self.dense_bops,
                )

    def bops(self, bits: Tensor) -> float:
        """Predicted BOPs (after pruning) with quantizer bits ``bits`` (n,)."""
        return float(bops_of(bits.double().cpu(), self.macs, self.wq, self.aq, self.fixed_w, self.fixed_a))

    def allocate(self, fisher: Tensor, rng: Tensor, signed: Tensor) -> Tensor:
        """Integer bits (n,) minimising the predicted rounding cost within the budget."""
        return allocate_bits(
            fisher.double().cpu(),
            rng.double().cpu(),
            signed.cpu(),
            self.lo,
            self.hi,
            self.macs,
            self.wq,
            self.aq,
            self.fixed_w,
            self.fixed_a,
            self.budget,
        )
