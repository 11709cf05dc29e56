"""How many units each prunable group loses, and when: floors, uniform quotas, period quotas.

Pure integer bookkeeping over groups (vectors of shape (G,), one entry per prunable group):

- a **floor** is how many units a group keeps at least: ``max(min_keep_units,
  ceil(min_keep_fraction * size))``, rounded up to a multiple of ``group_divisible`` and never
  more than the group has. Floors are what stops *layer collapse*: global selection on a
  trained model can otherwise empty a layer down to one channel (docs/method.md §3.5);
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


def _kind_members(kinds: Tensor | None, n: int) -> list[list[int]]:
    """Groups by kind, each list ascending, the lists ordered by their first group."""
    if kinds is None:
        return [[g] for g in range(n)]
    members: dict[int, list[int]] = {}
    for g, kind in enumerate(kinds.tolist()):
        members.setdefault(int(kind), []).append(g)
    return list(members.values())


def uniform_quotas(
    sizes: Tensor, target: int, floors: Tensor, *, divisible: int, kinds: Tensor | None = None
) -> Tensor:
    """Units to remove per group, (G,) int64: the same share s = target / Σ size everywhere.

    Real-valued ideals ``s * size`` are capped at ``size - floor`` (the excess goes to the other
    groups, water-filling); integer quotas then follow the ideals: every group first takes the
    whole increments that fit under its ideal, and the rest of the target goes one increment
    at a time to the group furthest below its ideal (ties: the lower group index). With
    ``divisible=1`` the quotas sum to exactly ``min(target, Σ (size - floor))``; with larger
    ``divisible`` to the largest total the increments allow.

    ``kinds`` (G,) gives groups of one kind (the same group of every layer; equal sizes and
    floors) one id: each kind then takes its increments together, so its groups end with equal
    quotas, and the sum may fall short of the target by less than one increment per group of a
    kind (``Config.uniform_layers``).

    >>> uniform_quotas(torch.tensor([2, 2, 2]), 1, torch.ones(3, dtype=torch.long), divisible=1).tolist()
    [1, 0, 0]
    >>> uniform_quotas(torch.tensor([2, 2, 2]), 2, torch.ones(3, dtype=torch.long), divisible=1,
    ...                kinds=torch.zeros(3, dtype=torch.long)).tolist()   # all or none
    [0, 0, 0]
    """
    n = sizes.numel()
    cap = (sizes - floors).clamp_min(0)
    target = min(int(target), int(cap.sum()))
    if target <= 0 or n == 0:
        return torch.zeros_like(sizes)
    ideal = _water_fill(sizes.double(), cap.double(), float(target))
    members = _kind_members(kinds, n)
    for group in members:
        if len({(int(sizes[g]), int(floors[g])) for g in group}) > 1:
            raise ValueError(f"uniform_quotas: groups {group} share a kind but not their size and floor")
    steps = [_steps(int(sizes[m[0]]), int(floors[m[0]]), divisible) for m in members]
    count = [len(m) for m in members]
    quota = _kind_quotas(steps, count, [float(ideal[m[0]]) for m in members], target)
    out = torch.zeros_like(sizes)
    for k, group in enumerate(members):
        out[group] = quota[k]
    return out


def _kind_quotas(steps: list[list[int]], count: list[int], ideal: list[float], target: int) -> list[int]:
    """Per kind, the quota of each of its ``count`` groups (`uniform_quotas`; a kind moves as one)."""
    n = len(steps)
    taken = [0] * n
    quota = [0] * n
    for k in range(n):  # 1) whole increments under the ideal
        while taken[k] < len(steps[k]) and quota[k] + steps[k][taken[k]] <= ideal[k] + 1e-9:
            quota[k] += steps[k][taken[k]]
            taken[k] += 1
    left = target - sum(q * c for q, c in zip(quota, count))
    while left > 0:  # 2) the rest, to the kind furthest below its ideal
        best, best_gap = -1, -math.inf
        for k in range(n):
            if taken[k] < len(steps[k]) and steps[k][taken[k]] * count[k] <= left:
                gap = ideal[k] - quota[k]
                if gap > best_gap:
                    best, best_gap = k, gap
        if best < 0:
            break
        quota[best] += steps[best][taken[best]]
        left -= steps[best][taken[best]] * count[best]
        taken[best] += 1
    return quota


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
