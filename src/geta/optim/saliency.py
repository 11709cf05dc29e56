"""Saliency of prunable units and the global selection of the redundant set (docs/method.md §3.3).

Both functions are pure and vectorised over all units of all prunable groups: a unit's
statistics arrive as vectors (one entry per unit), groups as an int64 vector naming each
unit's group, and no Python loop runs over groups or units.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CRITERIA_WEIGHTS", "saliency_scores", "select_per_group", "select_units"]

CRITERIA_WEIGHTS = (0.2, 0.2, 0.2, 0.2, 0.2)
"""Mixing weights of the five criteria, in the order listed by `saliency_scores`."""


def saliency_scores(
    x_sq: Tensor,
    xg_dot: Tensor,
    g_sq: Tensor,
    length: Tensor,
    weights: tuple[float, ...] = CRITERIA_WEIGHTS,
) -> Tensor:
    """Saliency of each unit j from its rows x_j and gradient rows g_j; low = redundant.

    Inputs are vectors (n,): ‖x_j‖², <x_j, g_j>, ‖g_j‖² and len(x_j) (element count). The five
    criteria are ‖x_j‖, ‖x_j‖/len(x_j), cos(x_j, g_j) + 1, |<x_j, g_j>| and 0.5 <x_j, g_j>²;
    each is divided by its L2 norm over the n units (left as is when that norm is 0) and they
    are mixed with ``weights``. cos is 0 for a zero row and clamped into [-1, 1].
    """
    x_norm, g_norm = x_sq.sqrt(), g_sq.sqrt()
    denom = x_norm * g_norm
    cos = torch.where(denom > 0, xg_dot / torch.where(denom > 0, denom, 1.0), 0.0).clamp(-1.0, 1.0)
    criteria = torch.stack(
        [
            x_norm,
            x_norm / length.to(x_norm.dtype).clamp_min(1.0),
            cos + 1.0,
            xg_dot.abs(),
            0.5 * xg_dot**2,
        ]
    )  # (5, n)
    scale = torch.linalg.vector_norm(criteria, dim=1, keepdim=True)  # (5, 1)
    criteria = criteria / torch.where(scale > 0, scale, 1.0)
    w = torch.tensor(weights, dtype=criteria.dtype, device=criteria.device)
    return (w[:, None] * criteria).sum(0)


def _by_group(scores: Tensor, unit_group: Tensor, cand: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Candidates sorted by (group, score, id): (order, group, rank in group, alive per group)."""
    order = cand[torch.argsort(scores[cand], stable=True)]
    order = order[torch.argsort(unit_group[order], stable=True)]
    grp = unit_group[order]  # (m,) non-decreasing
    n_alive = torch.bincount(grp, minlength=int(unit_group.max()) + 1)  # (G,)
    first = torch.cumsum(n_alive, 0) - n_alive  # position of each group's first unit in `order`
    rank = torch.arange(order.numel(), device=scores.device) - first[grp]  # rank inside group
    return order, grp, rank, n_alive


def select_per_group(scores: Tensor, unit_group: Tensor, alive: Tensor, need: Tensor) -> Tensor:
    """In every group g, the ``need[g]`` lowest-scoring alive units (uniform selection).

    ``scores`` (n,), ``unit_group`` (n,) int64, ``alive`` (n,) bool, ``need`` (G,) int64.
    Returns the bool mask (n,) of the selected units; ties go to the lower unit id.
    """
    out = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    cand = alive.nonzero().squeeze(1)
    if cand.numel() == 0:
        return out
    order, grp, rank, _ = _by_group(scores, unit_group, cand)
    out[order[rank < need.to(rank.device)[grp]]] = True
    return out


def select_units(
    scores: Tensor,
    unit_group: Tensor,
    alive: Tensor,
    quota: int,
    *,
    divisible: int = 1,
    keep: Tensor | None = None,
) -> Tensor:
    """Pick up to ``quota`` of the lowest-scoring alive units, globally across groups.

    ``scores`` (n,) float, ``unit_group`` (n,) int64 (group id of each unit, 0..G-1), ``alive``
    (n,) bool (units not pruned yet). Returns a bool mask (n,) of the newly selected units.

    Each group keeps ``divisible`` alive units (all of them if it has fewer), and its alive
    count moves in *blocks*: first ``n_alive % divisible`` units (if any), then ``divisible``
    at a time, so that its surviving count becomes a multiple of ``divisible``. Blocks are the
    lowest-scoring alive units of their group in order, scored by their mean; blocks are taken
    in order of mean score (ties: lower group, then earlier block) while their sizes fit the
    quota. With ``divisible=1`` this picks exactly the ``quota`` lowest units (or all that may
    go), each group keeping its highest-scoring unit. ``keep`` (G,) raises the units each group
    keeps to its floor (`geta.optim.quota.group_floors`, a multiple of ``divisible``).
    """
    n = scores.shape[0]
    out = torch.zeros(n, dtype=torch.bool, device=scores.device)
    cand = alive.nonzero().squeeze(1)
    if quota <= 0 or cand.numel() == 0:
        return out
    order, grp, block = _blocks(scores, unit_group, cand, divisible, keep)
    if order.numel() == 0:
        return out
    key = grp * (int(block.max()) + 1) + block  # sorted (group, block) key
    uniq, inv = torch.unique(key, return_inverse=True)
    size = torch.bincount(inv, minlength=uniq.numel())
    total = torch.zeros(uniq.numel(), dtype=scores.dtype, device=scores.device)
    total.index_add_(0, inv, scores[order])
    mean = total / size.to(scores.dtype)
    # 3) blocks by mean score (stable keeps (group, block) order on ties); take what fits
    by_mean = torch.argsort(mean, stable=True)
    fits = torch.cumsum(size[by_mean], 0) <= quota
    taken = torch.zeros(uniq.numel(), dtype=torch.bool, device=scores.device)
    taken[by_mean[fits]] = True
    out[order[taken[inv]]] = True
    return out


def _blocks(
    scores: Tensor, unit_group: Tensor, cand: Tensor, g: int, floor: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """(unit, group, block index) of every candidate that may go, sorted by (group, score, id)."""
    # 1) candidates sorted by (group, score, unit id): argsort score, then stable by group
    order, grp, rank, n_alive = _by_group(scores, unit_group, cand)
    # 2) blocks: a leading remainder block, then blocks of g; the last g (or floor) units stay
    least = torch.full_like(n_alive, g) if floor is None else floor.to(n_alive)[: n_alive.numel()]
    keep = torch.minimum(least, n_alive)
    eligible = rank < (n_alive - keep)[grp]
    r = (n_alive % g)[grp]
    block = torch.where(r > 0, torch.where(rank < r, 0, 1 + (rank - r) // g), rank // g)
    return order[eligible], grp[eligible], block[eligible]
