"""How many units each prunable group loses, and when: floors, uniform quotas, period quotas.

Pure integer bookkeeping over groups (vectors of shape (G,), one entry per prunable group):

- a **floor** is how many units a group keeps at least: ``max(min_keep_units,
  ceil(min_keep_fraction * size))``, rounded up to a multiple of ``group_divisible`` and never
  more than the group has. Floors are what stops *layer collapse*: global selection on a
  trained model can otherwise empty a layer down to one channel (method.md §3.5);
- a **uniform quota** gives every group the same share of its units to remove, as closely as
  integers, floors and divisibility allow, with the quotas summing to exactly the target K;
- **period quotas** spread a group's quota over the P pruning periods (cumulative counts).

>>> import torch
>>> sizes = torch.tensor([32, 32, 64])
>>> floors = group_floors(sizes, fraction=0.1, count=1, divisible=1)
>>> floors.tolist()
[4, 4, 7]
>>> uniform_quotas(sizes, 64, floors, divisible=1).tolist()   # half of every group
[16, 16, 32]
>>> cumulative_quotas(torch.tensor([16, 5]), periods=4).tolist()
[[4, 1], [8, 2], [12, 3], [16, 5]]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["cumulative_quotas", "group_floors", "uniform_quotas"]


def group_floors(sizes: Tensor, *, fraction: float, count: int, divisible: int) -> Tensor:
    """Units each group keeps at least, (G,) int64 (see the module docstring)."""
    by_fraction = torch.ceil(sizes.double() * fraction - 1e-9).long()
    floor = torch.maximum(by_fraction, torch.full_like(sizes, count))
    floor = torch.maximum(floor, torch.full_like(sizes, divisible))
    floor = (floor + divisible - 1) // divisible * divisible  # a multiple of `divisible`
    return torch.minimum(floor, sizes)


def _steps(size: int, floor: int, divisible: int) -> list[int]:
    """The removal increments of one group: first to a multiple of ``divisible``, then by it."""
    room = size - floor
    if room <= 0:
        return []
    first = size % divisible
    steps = [first] if first else []
    steps += [divisible] * ((room - first) // divisible)
    return steps


def uniform_quotas(sizes: Tensor, target: int, floors: Tensor, *, divisible: int) -> Tensor:
    """Units to remove per group, (G,) int64: the same share s = target / Σ size everywhere.

    Real-valued ideals ``s * size`` are capped at ``size - floor`` (the excess goes to the other
    groups, water-filling); integer quotas then follow the ideals: every group first takes the
    whole increments that fit under its ideal, and the rest of the target goes one increment
    at a time to the group furthest below its ideal (ties: the lower group index). With
    ``divisible=1`` the quotas sum to exactly ``min(target, Σ (size - floor))``; with larger
    ``divisible`` to the largest total the increments allow.
    """
    n = sizes.numel()
    cap = (sizes - floors).clamp_min(0)
    target = min(int(target), int(cap.sum()))
    if target <= 0 or n == 0:
        return torch.zeros_like(sizes)
    ideal = _water_fill(sizes.double(), cap.double(), float(target))
    steps = [_steps(int(sizes[g]), int(floors[g]), divisible) for g in range(n)]
    taken = [0] * n
    quota = [0] * n
    for g in range(n):  # 1) whole increments under the ideal
        while taken[g] < len(steps[g]) and quota[g] + steps[g][taken[g]] <= ideal[g] + 1e-9:
            quota[g] += steps[g][taken[g]]
            taken[g] += 1
    left = target - sum(quota)
    while left > 0:  # 2) the rest, to the group furthest below its ideal
        best, best_gap = -1, -math.inf
        for g in range(n):
            if taken[g] < len(steps[g]) and steps[g][taken[g]] <= left:
                gap = float(ideal[g]) - quota[g]
                if gap > best_gap:
                    best, best_gap = g, gap
        if best < 0:
            break
        quota[best] += steps[best][taken[best]]
        left -= steps[best][taken[best]]
        taken[best] += 1
    return torch.tensor(quota, dtype=torch.long)


def _water_fill(sizes: Tensor, cap: Tensor, target: float) -> Tensor:
    """min(s * size, cap) per group with s chosen so that the sum is ``target`` (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if float(torch.minimum(mid * sizes, cap).sum()) < target:
            lo = mid
        else:
            hi = mid
    return torch.minimum(hi * sizes, cap)


def cumulative_quotas(quotas: Tensor, *, periods: int) -> Tensor:
    """Units each group has lost by the end of each period, (P, G): even steps, all by the last."""
    k = torch.arange(1, periods + 1, dtype=torch.long)[:, None]  # (P, 1)
    return quotas[None, :] * k // periods
