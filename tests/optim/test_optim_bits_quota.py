"""The pure allocation math of issue 8 against slow, obvious references."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geta.optim.bits import allocate_bits, allocate_bits_reference, bops_of, quant_noise
from geta.optim.quota import cumulative_quotas, group_floors, uniform_quotas
from geta.optim.sensitivity import FisherTracker
from geta.quant.quantizer import LearnableQuantizer


def brute_force(fisher, rng, signed, lo, hi, macs, wq, aq, fixed, budget):
    """The least total noise over every integer bit assignment within the budget (or None)."""
    best = None
    ranges = [range(int(a), int(b) + 1) for a, b in zip(lo.tolist(), hi.tolist())]
    for combo in itertools.product(*ranges):
        bits = torch.tensor(combo, dtype=torch.float64)
        if float(bops_of(bits, macs, wq, aq, fixed, fixed)) <= budget:
            noise = float(quant_noise(fisher, rng, bits, signed).sum())
            best = noise if best is None else min(best, noise)
    return best


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.2, 0.9))
def test_allocation_meets_the_budget_near_the_optimum(seed: int, share: float) -> None:
    g = torch.Generator().manual_seed(seed)
    n_layers = 3
    fisher = torch.rand(2 * n_layers, generator=g, dtype=torch.float64) * 10
    rng = torch.rand(2 * n_layers, generator=g, dtype=torch.float64) + 0.1
    signed = torch.rand(2 * n_layers, generator=g) < 0.5
    lo, hi = torch.full((2 * n_layers,), 2.0), torch.full((2 * n_layers,), 5.0)
    macs = torch.randint(1, 1000, (n_layers,), generator=g).double()
    wq, aq = torch.arange(n_layers), torch.arange(n_layers, 2 * n_layers)  # weight, input quantizers
    fixed = torch.full((n_layers,), 32.0, dtype=torch.float64)
    low, high = float(bops_of(lo, macs, wq, aq, fixed, fixed)), float(bops_of(hi, macs, wq, aq, fixed, fixed))
    budget = low + share * (high - low)
    bits = allocate_bits(fisher, rng, signed, lo, hi, macs, wq, aq, fixed, fixed, budget)
    assert bool(((bits >= lo) & (bits <= hi) & (bits == bits.round())).all())
    assert float(bops_of(bits, macs, wq, aq, fixed, fixed)) <= budget
    optimum = brute_force(fisher, rng, signed, lo, hi, macs, wq, aq, fixed, budget)
    assert optimum is not None
    assert float(quant_noise(fisher, rng, bits.double(), signed).sum()) <= 4 * optimum + 1e-12


def test_allocation_with_no_room_returns_the_lower_bounds() -> None:
    one = torch.ones(1)
    bits = allocate_bits(one, one, torch.tensor([True]), 2 * one, 8 * one, torch.tensor([10.0]),
                         torch.tensor([0]), torch.tensor([-1]), 32 * one, 32 * one, budget=1.0)  # fmt: skip
    assert bits.tolist() == [2.0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=8), st.floats(0.0, 0.95), st.sampled_from([1, 2, 4]),
       st.floats(0.0, 0.5))  # fmt: skip
def test_uniform_quotas(sizes: list[int], share: float, divisible: int, fraction: float) -> None:
    size = torch.tensor(sizes)
    floors = group_floors(size, fraction=fraction, count=1, divisible=divisible)
    assert bool((floors <= size).all())
    for s, f in zip(sizes, floors.tolist()):  # the floor, by its definition
        want = min(s, math.ceil(max(1, math.ceil(fraction * s - 1e-9), divisible) / divisible) * divisible)
        assert f == want
    target = math.floor(share * sum(sizes) + 0.5)
    quota = uniform_quotas(size, target, floors, divisible=divisible)
    cap = size - floors
    assert bool(((quota >= 0) & (quota <= cap.clamp_min(0))).all())
    keep = size - quota
    assert all(k % divisible == 0 or q == 0 for k, q in zip(keep.tolist(), quota.tolist()))
    if divisible == 1:
        assert int(quota.sum()) == min(target, int(cap.clamp_min(0).sum()))
        s = target / sum(sizes)  # uncapped groups lose the same share, to within a unit
        free = [i for i in range(len(sizes)) if quota[i] < cap[i]]
        for i in free:
            assert abs(int(quota[i]) - s * sizes[i]) < 1 + 1e-9 or int(quota[i]) >= s * sizes[i]
    else:
        assert int(quota.sum()) <= target


def test_cumulative_quotas_end_at_the_quota() -> None:
    cum = cumulative_quotas(torch.tensor([16, 5, 0]), periods=3)
    assert cum[-1].tolist() == [16, 5, 0]
    assert bool((cum[1:] >= cum[:-1]).all())


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 100_000), st.integers(1, 12), st.integers(1, 10), st.floats(0.0, 1.0))
def test_allocation_matches_its_tensor_reference_bitwise(seed: int, n: int, n_ops: int, share: float) -> None:
    """The incremental float descent returns exactly the tensor reference's bits, including
    shared quantizers, unquantized operands, ties and budgets below all-``lo``."""
    g = torch.Generator().manual_seed(seed)
    fisher = torch.rand(n, generator=g, dtype=torch.float64) * 10 ** torch.randint(-6, 4, (n,), generator=g)
    fisher[torch.rand(n, generator=g) < 0.2] = 0.0  # unmeasured quantizers
    rng = torch.rand(n, generator=g, dtype=torch.float64) * 3 + 1e-3
    signed = torch.rand(n, generator=g) < 0.5
    lo = torch.randint(1, 5, (n,), generator=g).float()
    hi = lo + torch.randint(0, 6, (n,), generator=g).float()
    macs = torch.randint(1, 10_000, (n_ops,), generator=g).double()
    macs = macs * torch.rand(n_ops, generator=g, dtype=torch.float64)
    wq = torch.randint(-1, n, (n_ops,), generator=g)
    aq = torch.randint(-1, n, (n_ops,), generator=g)
    fixed_w, fixed_a = torch.full((n_ops,), 32.0), torch.full((n_ops,), 16.0)
    low, high = (float(bops_of(b, macs, wq, aq, fixed_w, fixed_a)) for b in (lo, hi))
    budget = low - 1.0 if share < 0.05 else low + share * (high - low)
    args = (fisher, rng, signed, lo, hi, macs, wq, aq, fixed_w, fixed_a, budget)
    fast, slow = allocate_bits(*args), allocate_bits_reference(*args)
    assert fast.dtype == slow.dtype and torch.equal(fast, slow)


@pytest.mark.parametrize("shared", [False, True])
def test_fisher_take_into_adds_what_take_returns(shared: bool) -> None:
    """`FisherTracker.take_into(total)` is ``total += take()`` to the bit, over several steps,
    with each quantizer run once (the fast path) or one run twice (backward-order sums)."""
    torch.manual_seed(0)
    quants = [LearnableQuantizer(init_bits=8) for _ in range(3)]
    for q in quants:
        q.init_from(torch.tensor(2.0))
    twins = copy.deepcopy(quants)
    fast, slow = FisherTracker(quants), FisherTracker(twins)
    a, b = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    order = [0, 1, 2, 1] if shared else [2, 0, 1]
    for _ in range(3):
        x = torch.randn(64)
        for qs in (quants, twins):
            sum((qs[i](x * (k + 1)) ** 2).sum() for k, i in enumerate(order)).backward()
        fast.take_into(a)
        b += slow.take()
    fast.remove()
    slow.remove()
    assert bool((a > 0).all()) and torch.equal(a, b)
