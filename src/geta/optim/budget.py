"""`BitBudget`: the BOPs cost model of a run and the bit allocation that meets its budget.

At construction it lists every multiplying op of the model with its MACs and quantizers
(`geta.reporting.count.layer_costs`, the same counting `geta.report` uses) and predicts each
op's MACs *after* pruning: the run knows how many units every group will lose (its quotas), and
a conv or linear op's MACs scale with the kept fraction of its weight's output (dim 0) and
input (dim 1) channels. Ops without a weight (activation x activation products) are counted
unpruned, so the prediction never undercounts.

The budget is ``Config.target_bops`` x the dense FP32 BOPs (32 x 32 x dense MACs). Without a
target: under the joint allocation (``Config.chooses_widths``) `DEFAULT_BUDGET` times the BOPs
of the unpruned model with every quantizer at its lower bit bound; with a fixed sparsity the
BOPs of every quantizer at the middle of its bit range. A budget the bounds cannot meet (all
quantizers at their lower bit bound and the target sparsity reached, or every group at its
floor under the joint allocation) is a `ConfigError` at construction, never a silent miss.

Under the joint allocation the widths are not known in advance: `BitBudget.allocate_joint`
chooses them with the bits (`geta.optim.widths`), from the MACs before pruning and which
groups' rows every op's weight holds.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geta.errors import ConfigError
from geta.optim.bits import allocate_bits, bops_of
from geta.optim.quantizer_table import QuantizerTable
from geta.optim.units import UnitLayout
from geta.optim.widths import PruneTerms, QuantTerms, allocate_joint, removable
from geta.plan import Plan
from geta.reporting.count import LayerCost, layer_costs
from geta.reporting.model import FP32_BITS

__all__ = ["DEFAULT_BUDGET", "WIDTH_SKEW", "BitBudget", "InfeasibleBudget"]

WIDTH_SKEW: float | None = 0.25
"""Under the joint allocation no group loses a larger fraction of its units than the whole model
does plus this: the second-order costs are local, and a group emptied down to its floor loses
more than they predict (measured on the benchmark's tasks, docs/benchmarks.md)."""

DEFAULT_BUDGET = 0.5
"""Without ``Config.target_bops`` the joint allocation's budget is this share of the BOPs of
the unpruned model with every quantizer at its lower bit bound: to meet it the run must both
prune and use low bits where they cost least (chosen by the compression benchmark,
docs/benchmarks.md)."""


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

    def __init__(
        self,
        plan: Plan,
        table: QuantizerTable,
        layout: UnitLayout,
        removed: Tensor,
        *,
        floors: Tensor | None = None,
        kinds: Tensor | None = None,
    ) -> None:
        if plan.example_inputs is None:
            raise ConfigError("the bit budget needs the plan's example inputs (plan.example_inputs is None)")
        # a sharded model cannot be captured: `geta.shard` keeps its terms from before sharding
        costs = plan.costs if plan.costs is not None else layer_costs(plan.model, plan.example_inputs)
        joint = plan.config.chooses_widths
        kept = {} if joint else _kept_fractions(layout, removed)  # joint: the allocation decides
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
        self.weight_ids = {id(c.weight) for c in costs if c.weight is not None}  # multiplying ops' weights
        self.macs = torch.tensor(macs, dtype=torch.float64)  # (L,) predicted after pruning
        self.wq = torch.tensor(wq, dtype=torch.long)  # (L,) weight quantizer or -1
        self.aq = torch.tensor(aq, dtype=torch.long)  # (L,) input quantizer or -1
        self.fixed_w = torch.tensor(fixed_w, dtype=torch.float64)
        self.fixed_a = torch.tensor(fixed_a, dtype=torch.float64)
        self.dense_bops = float(sum(c.macs for c in costs)) * FP32_BITS * FP32_BITS
        self.lo, self.hi = table.b_lo.double().cpu(), table.b_final.double().cpu()
        self.extent, self.touches = _op_extents(costs, layout) if joint else (None, ())
        target = plan.config.target_bops
        if target is None and joint:
            self.budget = DEFAULT_BUDGET * self.bops(self.lo)
        elif target is None:
            self.budget = self.bops((self.lo + self.hi) / 2)
        else:
            self.budget = float(target) * self.dense_bops
        sizes = torch.tensor([g.size for g in plan.prunable_groups], dtype=torch.long)
        self.floors = sizes.clone() if floors is None else floors.clone()  # no floors given: no pruning
        self.kinds = torch.arange(sizes.numel()) if kinds is None else kinds.clone()
        self.divisible = plan.config.group_divisible
        if target is not None:
            self._check_feasible(plan, float(target), sizes)

    def _check_feasible(self, plan: Plan, target: float, sizes: Tensor) -> None:
        joint = self.extent is not None
        most = removable(sizes, self.floors, self.divisible) if joint else None
        floor = self.bops_after(self.lo, most) if most is not None else self.bops(self.lo)
        if floor <= self.budget * (1 + 1e-9):
            return
        if joint:
            how = "and every prune group at its floor"
            fix = "lower min_keep_fraction / min_keep_units"
        else:
            how = f"and target_sparsity={plan.config.target_sparsity}"
            fix = "raise target_sparsity"
        raise InfeasibleBudget(
            f"Config.target_bops={target} cannot be met: with every quantizer at its lower bit bound "
            f"{how} the model costs {floor / self.dense_bops:.6f} of the dense BOPs; raise "
            f"target_bops, lower the bit ranges' lower ends or {fix}",
            target=target,
            floor=floor / self.dense_bops,
        )

    def bops_after(self, bits: Tensor, removed: Tensor) -> float:
        """Predicted BOPs with quantizer bits ``bits`` (n,) once group g lost ``removed[g]`` units
        (joint allocation only: the MACs are those before pruning)."""
        assert self.extent is not None
        gone = torch.zeros(self.macs.numel(), 2, dtype=torch.float64)  # (L, 2) positions removed
        for op, dim, g, w in self.touches:
            gone[op, dim] += float(removed[g]) * w
        kept = (1.0 - gone / self.extent.clamp_min(1.0)).clamp_min(0.0)
        macs = self.macs * kept[:, 0] * kept[:, 1]
        return float(bops_of(bits.double().cpu(), macs, self.wq, self.aq, self.fixed_w, self.fixed_a))

    def allocate_joint(
        self,
        fisher: Tensor,
        rng: Tensor,
        signed: Tensor,
        unit_costs: Tensor,
        unit_group: Tensor,
        min_removed: int,
    ) -> tuple[Tensor, Tensor]:
        """(bits (n,), removed units per group (G,)) minimising the predicted loss increase of
        rounding and removal within the budget (`geta.optim.widths.allocate_joint`)."""
        assert self.extent is not None
        costs = tuple(unit_costs[unit_group == g] for g in range(self.floors.numel()))  # (size_g,) each
        q = QuantTerms(fisher.double().cpu(), rng.double().cpu(), signed.cpu(), self.lo, self.hi,
                       self.wq, self.aq, self.fixed_w, self.fixed_a)  # fmt: skip
        p = PruneTerms(self.macs, self.extent, self.touches, costs, self.floors, self.kinds, self.divisible,
                       WIDTH_SKEW)  # fmt: skip
        return allocate_joint(q, p, budget=self.budget, min_removed=min_removed)

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


def _op_extents(
    costs: list[LayerCost], layout: UnitLayout
) -> tuple[Tensor, tuple[tuple[int, int, int, float], ...]]:
    """Per op (L, 2): its weight's extent along dims 0 and 1 (1 without a weight); and every
    (op, dim, group, positions per unit) where a prune group holds rows of the op's weight."""
    extent = torch.ones(len(costs), 2, dtype=torch.float64)
    ops_of: dict[int, list[int]] = {}
    for op, c in enumerate(costs):
        if c.weight is not None:
            ops_of.setdefault(id(c.weight), []).append(op)
            for d in (0, 1):
                if c.weight.dim() > d:
                    extent[op, d] = float(c.weight.shape[d])
    touches = []
    for ref in layout.slices:
        if ref.dim > 1:
            continue
        group = int(layout.unit_group[ref.offset])
        for op in ops_of.get(id(ref.tensor), []):
            touches.append((op, ref.dim, group, float(ref.index.shape[1])))
    return extent, tuple(touches)
