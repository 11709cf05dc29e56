"""The slow, obvious statement of `geta.optim.widths.allocate_joint` (the tests' reference).

`allocate_joint_reference` makes the same moves as the fast greedy, but at every step it
evaluates the whole model's BOPs (`geta.optim.bits.bops_of`) after every possible move and the
rounding noise through `geta.optim.bits.quant_noise`, in tensor form; nothing is refreshed
incrementally, so nothing can go stale. It is quadratic in the number of moves: fit for the
test problems, not for training.

>>> import torch
>>> from geta.optim.widths import PruneTerms, QuantTerms, allocate_joint
>>> q = QuantTerms(fisher=torch.tensor([1.0]), rng=torch.ones(1), signed=torch.tensor([True]),
...                lo=torch.tensor([2.0]), hi=torch.tensor([8.0]), wq=torch.tensor([0, -1]),
...                aq=torch.tensor([-1, -1]), fixed_w=torch.full((2,), 32.0), fixed_a=torch.full((2,), 32.0))
>>> p = PruneTerms(macs=torch.tensor([16.0, 16.0]), extent=torch.tensor([[4.0, 4.0], [4.0, 4.0]]),
...                touches=((0, 0, 0, 1.0), (1, 1, 0, 1.0)), costs=(torch.tensor([0.0, 0.0, 5.0, 5.0]),),
...                floors=torch.tensor([1]), kinds=torch.tensor([0]), divisible=1)
>>> budget = 16 * 8 * 32 / 4 + 16 * 32 * 32 / 2
>>> bits, removed = allocate_joint_reference(q, p, budget=budget)
>>> fast_bits, fast_removed = allocate_joint(q, p, budget=budget)
>>> torch.equal(bits, fast_bits), torch.equal(removed, fast_removed)
(True, True)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geta.optim.bits import bops_of, quant_noise
from geta.optim.widths import BIT_LOSS, PruneTerms, QuantTerms, _increments, _kind_members

__all__ = ["allocate_joint_reference"]


def _reference_bops(q: QuantTerms, p: PruneTerms, bits: Tensor, removed: Tensor) -> float:
    """The whole model's BOPs with ``bits`` (n,) once group g lost ``removed[g]`` units."""
    gone = torch.zeros(p.macs.numel(), 2, dtype=torch.float64)  # (L, 2) positions removed
    for op, dim, g, w in p.touches:
        gone[op, dim] += float(removed[g]) * w
    kept = (1.0 - gone / p.extent.double().clamp_min(1.0)).clamp_min(0.0)
    return float(bops_of(bits, p.macs.double() * kept[:, 0] * kept[:, 1], q.wq, q.aq, q.fixed_w, q.fixed_a))


def _reference_noise(q: QuantTerms, j: int, b: float) -> float:
    """ΔL-scaled rounding noise of quantizer j at b bits."""
    one = slice(j, j + 1)
    f = q.fisher[one].double().clamp_min(0.0)
    return float(quant_noise(f, q.rng[one].double(), torch.tensor([b]), q.signed[one])) * BIT_LOSS


class _ReferenceState:
    """What `allocate_joint_reference` moves: bits (n,), units removed per group (G,), and the
    moves each kind of group has taken; every key is computed from the whole model's BOPs."""

    def __init__(self, q: QuantTerms, p: PruneTerms) -> None:
        self.q, self.p = q, p
        self.members = members = _kind_members(p.kinds)
        self.moves = [_increments(p.costs[m[0]].numel(), int(p.floors[m[0]]), p.divisible) for m in members]
        self.ordered = [sorted(c.double().clamp_min(0.0).tolist()) for c in p.costs]
        self.sizes = [c.numel() for c in p.costs]
        self.bits, self.lo = q.hi.double().clone(), q.lo.double()
        self.removed = torch.zeros(len(p.costs), dtype=torch.long)
        self.taken = [0] * len(self.members)

    def step_of(self, k: int) -> int:
        return self.moves[k][self.taken[k]] if self.taken[k] < len(self.moves[k]) else 0

    def loss_of(self, k: int) -> float:  # the next `step_of(k)` cheapest units of every member
        r, step = self.removed, self.step_of(k)
        return sum(sum(self.ordered[g][int(r[g]) : int(r[g]) + step]) for g in self.members[k])

    def after(self, k: int) -> Tensor:
        r = self.removed.clone()
        r[self.members[k]] += self.step_of(k)
        return r

    def take(self, k: int) -> None:
        self.removed, self.taken[k] = self.after(k), self.taken[k] + 1

    def allowed(self, k: int) -> bool:  # within `skew` of the model's removed fraction after the move
        g, step, skew = self.members[k][0], self.step_of(k), self.p.skew
        share = (int(self.removed.sum()) + step * len(self.members[k])) / sum(self.sizes)
        return skew is None or (int(self.removed[g]) + step) / self.sizes[g] <= share + skew + 1e-12

    def bit_key(self, j: int, total: float) -> float:
        fewer = self.bits.clone()
        fewer[j] -= 1
        saved = total - _reference_bops(self.q, self.p, fewer, self.removed)
        if not (bool(self.bits[j] > self.lo[j]) and saved > 0):
            return math.inf
        b = float(self.bits[j])
        return (_reference_noise(self.q, j, b - 1) - _reference_noise(self.q, j, b) + 1e-30) / saved

    def prune_key(self, k: int, total: float) -> float:
        step = self.step_of(k)
        saved = total - _reference_bops(self.q, self.p, self.bits, self.after(k)) if step else 0.0
        return (self.loss_of(k) + 1e-30) / saved if step and saved > 0 and self.allowed(k) else math.inf


def allocate_joint_reference(
    q: QuantTerms, p: PruneTerms, *, budget: float, min_removed: int = 0
) -> tuple[Tensor, Tensor]:
    """`allocate_joint` in tensor form, the slow, obvious statement: every step evaluates the
    model's whole BOPs after every possible move and takes the least loss per BOP saved."""
    s = _ReferenceState(q, p)
    kinds, n = range(len(s.members)), s.bits.numel()
    while int(s.removed.sum()) < min_removed:  # 1) least loss per unit, to the minimum
        per_unit = [s.loss_of(k) / (s.step_of(k) * len(s.members[k])) if s.step_of(k) and s.allowed(k)
                    else math.inf for k in kinds]  # fmt: skip
        k = min(range(len(per_unit)), key=per_unit.__getitem__)
        if not math.isfinite(per_unit[k]):
            break
        s.take(k)
    while (total := _reference_bops(q, p, s.bits, s.removed)) > budget:  # 2) least loss per BOP saved
        keys = [s.bit_key(j, total) for j in range(n)] + [s.prune_key(k, total) for k in kinds]
        i = min(range(len(keys)), key=keys.__getitem__)
        if not math.isfinite(keys[i]):
            break
        if i < n:
            s.bits[i] -= 1
        else:
            s.take(i - n)
    return s.bits, s.removed
