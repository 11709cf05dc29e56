"""Joint allocation of widths and bits (`geta.optim.widths`): the fast greedy against the slow,
obvious reference, and the invariants every allocation keeps."""

from __future__ import annotations

import math

import pytest
import torch

from geta.optim.bits import bops_of
from geta.optim.widths import (
    MAX_MOVES,
    PruneTerms,
    QuantTerms,
    _increments,
    allocate_joint,
)
from geta.optim.widths_reference import allocate_joint_reference


def _problem(seed: int, *, kinds: bool = False, divisible: int = 1) -> tuple[QuantTerms, PruneTerms]:
    """A chain of linear ops with random sizes: group g is op g's output rows and op g+1's input
    columns; every op has a weight quantizer and (odd ops) an input quantizer."""
    g = torch.Generator().manual_seed(seed)
    n_ops = 4
    width = [int(torch.randint(4, 12, (1,), generator=g))] if kinds else []
    dims = [int(torch.randint(3, 8, (1,), generator=g))]
    for _ in range(n_ops):
        dims.append(width[0] if kinds else int(torch.randint(4, 12, (1,), generator=g)))
    dims[-1] = 3  # the head's outputs are not pruned
    macs = torch.tensor([float(dims[i] * dims[i + 1] * 10) for i in range(n_ops)])
    extent = torch.tensor([[float(dims[i + 1]), float(dims[i])] for i in range(n_ops)])
    wq, aq, n_q = [], [], 0
    for i in range(n_ops):
        wq.append(n_q)
        n_q += 1
        if i % 2:
            aq.append(n_q)
            n_q += 1
        else:
            aq.append(-1)
    groups = n_ops - 1
    touches = tuple(t for gi in range(groups) for t in ((gi, 0, gi, 1.0), (gi + 1, 1, gi, 1.0)))
    costs = tuple(torch.rand(dims[gi + 1], generator=g, dtype=torch.float64) * 1e-3 for gi in range(groups))
    floors = torch.tensor([max(1, math.ceil(0.1 * dims[gi + 1])) for gi in range(groups)])
    if divisible > 1:
        floors = (floors + divisible - 1) // divisible * divisible
    q = QuantTerms(
        fisher=torch.rand(n_q, generator=g, dtype=torch.float64) * 10,
        rng=torch.rand(n_q, generator=g, dtype=torch.float64) + 0.5,
        signed=torch.rand(n_q, generator=g) > 0.5,
        lo=torch.full((n_q,), 2.0),
        hi=torch.full((n_q,), 8.0),
        wq=torch.tensor(wq),
        aq=torch.tensor(aq),
        fixed_w=torch.full((n_ops,), 32.0),
        fixed_a=torch.full((n_ops,), 32.0),
    )
    kind = torch.zeros(groups, dtype=torch.long) if kinds else torch.arange(groups)
    return q, PruneTerms(macs, extent, touches, costs, floors, kind, divisible)


def _bops(q: QuantTerms, p: PruneTerms, bits: torch.Tensor, removed: torch.Tensor) -> float:
    gone = torch.zeros(p.macs.numel(), 2, dtype=torch.float64)
    for op, dim, g, w in p.touches:
        gone[op, dim] += float(removed[g]) * w
    kept = (1 - gone / p.extent).clamp_min(0)
    return float(bops_of(bits, p.macs * kept[:, 0] * kept[:, 1], q.wq, q.aq, q.fixed_w, q.fixed_a))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("fraction", [0.3, 0.05, 0.004])
@pytest.mark.parametrize("skew", [None, 0.2])
def test_fast_matches_reference(seed: int, fraction: float, skew: float | None) -> None:
    q, p = _problem(seed)
    p = PruneTerms(p.macs, p.extent, p.touches, p.costs, p.floors, p.kinds, p.divisible, skew)
    dense = _bops(q, p, torch.full_like(q.hi, 32.0), torch.zeros(3, dtype=torch.long))
    budget = fraction * dense
    fast = allocate_joint(q, p, budget=budget, min_removed=seed % 3)
    slow = allocate_joint_reference(q, p, budget=budget, min_removed=seed % 3)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])


@pytest.mark.parametrize("seed", range(6))
def test_invariants(seed: int) -> None:
    """Budget met (or the cheapest point returned), floors kept, bits in range, minimum removed."""
    q, p = _problem(seed, divisible=2 if seed % 2 else 1)
    dense = _bops(q, p, torch.full_like(q.hi, 32.0), torch.zeros(3, dtype=torch.long))
    sizes = torch.tensor([c.numel() for c in p.costs])
    for fraction in (0.2, 0.01, 1e-4):
        bits, removed = allocate_joint(q, p, budget=fraction * dense, min_removed=4)
        assert bool(((bits >= q.lo) & (bits <= q.hi)).all()) and torch.equal(bits, bits.round())
        assert bool((sizes - removed >= p.floors).all())
        assert int(removed.sum()) >= min(4, int((sizes - p.floors).sum()))
        if p.divisible > 1:  # the kept counts move in granules of `divisible` (after the remainder)
            assert bool((((sizes - removed) % p.divisible == 0) | (removed == 0)).all())
        cheapest = _bops(q, p, q.lo, sizes - p.floors)
        assert _bops(q, p, bits, removed) <= max(fraction * dense, cheapest) * (1 + 1e-12)


def test_sensitive_groups_keep_width() -> None:
    """With equal BOPs terms, the group whose units cost more keeps more of them."""
    q, p = _problem(0, kinds=False)
    costs = list(p.costs)
    costs[0] = costs[0] * 1e6  # group 0's units are expensive to remove
    p = PruneTerms(p.macs, p.extent, p.touches, tuple(costs), p.floors, p.kinds, 1)
    dense = _bops(q, p, torch.full_like(q.hi, 32.0), torch.zeros(3, dtype=torch.long))
    _, removed = allocate_joint(q, p, budget=0.01 * dense)
    sizes = torch.tensor([c.numel() for c in p.costs])
    kept = (sizes - removed).double() / sizes
    assert kept[0] > kept[1:].max()


def test_kinds_move_together() -> None:
    q, p = _problem(3, kinds=True)
    dense = _bops(q, p, torch.full_like(q.hi, 32.0), torch.zeros(3, dtype=torch.long))
    _, removed = allocate_joint(q, p, budget=0.003 * dense)
    assert len(set(removed.tolist())) == 1 and int(removed[0]) > 0
    assert torch.equal(removed, allocate_joint_reference(q, p, budget=0.003 * dense)[1])


@pytest.mark.parametrize(
    ("size", "floor", "div"), [(10, 1, 1), (3072, 307, 1), (100, 12, 8), (7, 7, 1), (9, 4, 4)]
)
def test_increments(size: int, floor: int, div: int) -> None:
    moves = _increments(size, floor, div)
    assert sum(moves) <= size - floor and len(moves) <= MAX_MOVES + 2
    kept = size
    for i, m in enumerate(moves):
        kept -= m
        assert m > 0 and (kept % div == 0 or (i == 0 and m < div))
    assert size - sum(moves) - floor < div  # everything that may go can go


def test_skew_bounds_every_group_near_the_models_fraction() -> None:
    q, p = _problem(0)
    costs = (p.costs[0] * 1e-6, *p.costs[1:])  # group 0 is nearly free to prune
    sizes = torch.tensor([c.numel() for c in p.costs])
    dense = _bops(q, p, torch.full_like(q.hi, 32.0), torch.zeros(3, dtype=torch.long))
    free = PruneTerms(p.macs, p.extent, p.touches, costs, p.floors, p.kinds, 1)
    held = PruneTerms(p.macs, p.extent, p.touches, costs, p.floors, p.kinds, 1, 0.1)
    _, r_free = allocate_joint(q, free, budget=0.05 * dense)
    _, r_held = allocate_joint(q, held, budget=0.05 * dense)
    share = float(r_held.sum()) / float(sizes.sum())
    assert bool((r_held.double() / sizes <= share + 0.1 + 1e-9).all())
    assert float(r_free[0]) / float(sizes[0]) > share + 0.1  # without the limit group 0 goes further
