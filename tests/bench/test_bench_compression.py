"""bench.compression_front (the compression benchmark's front arithmetic) against slow, obvious
references, and bench.compression's grid (budgets span the range, no sparsity in budget runs)."""

from __future__ import annotations

import importlib
import itertools
import math
import pathlib
import random
import statistics
import sys
from types import ModuleType

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository root: `bench`


def _bench(name: str) -> ModuleType:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"bench.{name}")


@pytest.fixture(scope="module")
def cf() -> ModuleType:
    return _bench("compression_front")


def _random_points(rng: random.Random, n: int) -> list[tuple[float, float]]:
    return [(10 ** rng.uniform(-4, 0), rng.uniform(40, 100)) for _ in range(n)]


def _front_reference(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Every point that no other point beats or ties in both (cheaper-or-equal and better-or-equal)."""
    keep = [p for p in points
            if not any(o != p and o[0] <= p[0] and o[1] >= p[1] for o in points)]  # fmt: skip
    return sorted(set(keep))


def test_pareto_keeps_exactly_the_undominated_points(cf: ModuleType) -> None:
    rng = random.Random(0)
    for _ in range(50):
        points = _random_points(rng, rng.randint(1, 12))
        assert cf.pareto(points) == _front_reference(points)
    assert cf.pareto([(1.0, 80.0), (1.0, 90.0)]) == [(1.0, 90.0)]  # the same BOPs: the better one


def test_interpolation_matches_numpy_in_log_bops(cf: ModuleType) -> None:
    rng = random.Random(1)
    for _ in range(30):
        front = cf.pareto(_random_points(rng, 8))
        if len(front) < 2:
            continue
        logb = np.log([b for b, _ in front])
        qs = np.array([q for _, q in front])
        for _ in range(20):
            q = rng.uniform(qs[0], qs[-1])
            assert cf.bops_at(front, q) == pytest.approx(math.exp(np.interp(q, qs, logb)), rel=1e-9)
            b = math.exp(rng.uniform(logb[0], logb[-1]))
            assert cf.quality_at(front, b) == pytest.approx(np.interp(math.log(b), logb, qs), abs=1e-9)
        assert cf.bops_at(front, qs[-1] + 1) is None and cf.bops_at(front, qs[0] - 1) is None
        assert cf.quality_at(front, front[0][0] / 2) is None  # the front has nothing that cheap
        assert cf.quality_at(front, front[-1][0] * 2) == front[-1][1]  # its best beyond its last point


def test_ratio_is_exact_inside_and_a_bound_outside(cf: ModuleType) -> None:
    front = [(0.001, 60.0), (0.004, 90.0), (0.016, 99.0)]
    value, kind = cf.ratio_at(front, (0.001, 75.0))  # 75: half-way between 60 and 90 -> 0.002
    assert kind == "exact" and value == pytest.approx(2.0)
    assert cf.ratio_at(front, (0.004, 99.5)) == (pytest.approx(4.0), "lower")  # beats the best
    assert cf.ratio_at(front, (0.0005, 50.0)) == (pytest.approx(2.0), "upper")  # below the cheapest
    assert math.isnan(cf.ratio_at([], (0.1, 50.0))[0])


def test_shifted_front_gives_its_shift_and_is_above(cf: ModuleType) -> None:
    """geta's points on the pipeline's front moved k times cheaper: every ratio is k."""
    rng = random.Random(2)
    for k in (1.0, 2.0, 3.5):
        front = cf.pareto(_random_points(rng, 10))
        if len(front) < 3:
            continue
        qs = [rng.uniform(front[0][1], front[-1][1]) for _ in range(6)]
        points = [(cf.bops_at(front, q) / k, q) for q in qs]
        summary = cf.front_summary(front, points, limit=math.inf)
        assert all(r == pytest.approx(k) and kind == "exact" for r, kind in summary.ratios)
        assert summary.median == pytest.approx(k) and summary.counted == 6
        assert summary.above  # on or above the front everywhere (k = 1: on it)


def _above_reference(front: list[tuple[float, float]], p: tuple[float, float]) -> bool:
    """At or above the front: nothing on it that cheap, or at least its log-interpolated quality."""
    logb = np.log([b for b, _ in front])
    return p[0] < front[0][0] or p[1] >= np.interp(math.log(p[0]), logb, [q for _, q in front]) - 1e-9


def test_summary_matches_a_brute_force_reference(cf: ModuleType) -> None:
    rng = random.Random(3)
    for _ in range(40):
        front = cf.pareto(_random_points(rng, 8))
        points = _random_points(rng, 6)
        limit = 10 ** rng.uniform(-3, 0)
        got = cf.front_summary(front, points, limit)
        inside = [p for p in points if p[0] <= limit]
        values = sorted(cf.ratio_at(front, p)[0] for p in inside)
        mid = len(values) // 2
        median = (values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2) if values else None
        assert got.counted == len(inside)
        assert got.above == all(_above_reference(front, p) for p in inside)
        if median is None:
            assert math.isnan(got.median)
        else:
            assert got.median == pytest.approx(median)
            assert got.median == pytest.approx(statistics.median(values))


def test_grid_budgets_span_the_range_without_sparsity() -> None:
    bc = _bench("compression")
    for task in bc.TASKS:
        lo, hi = bc.BUDGET_RANGE.get(task, bc.BUDGET_RANGE["*"])
        got = bc.budgets(task, quick=False)
        assert len(got) == bc.BUDGETS and got[0] == pytest.approx(lo) and got[-1] == pytest.approx(hi)
        assert all(b1 > b0 for b0, b1 in itertools.pairwise(got))
        specs = bc.geta_specs(task, quick=False)
        budget_specs = [s for n, s in specs.items() if n.startswith(bc.BUDGET_PREFIX)]
        assert sorted(s["budget"] for s in budget_specs) == pytest.approx(list(got))
        assert all("sparsity" not in s for s in budget_specs)  # joint allocation: widths chosen too
        assert specs[bc.DEFAULT] == {}  # the default: no budget, no sparsity
        assert set(bc.budgets(task, quick=True)) <= set(got)
