"""Saliency scores and the global selection against slow references over explicit rows."""

from __future__ import annotations

import math
import random

import pytest
import torch

from geta.optim.saliency import saliency_scores, select_units


def ref_scores(xs: list[list[float]], gs: list[list[float]]) -> list[float]:
    """The five criteria of docs/method.md §3.3 from each unit's concatenated rows, normalised and mixed."""
    crit = []
    for x, g in zip(xs, gs):
        xn = math.sqrt(sum(v * v for v in x))
        gn = math.sqrt(sum(v * v for v in g))
        dot = sum(a * b for a, b in zip(x, g))
        cos = dot / (xn * gn) if xn > 0 and gn > 0 else 0.0
        crit.append([xn, xn / len(x), cos + 1, abs(dot), 0.5 * dot * dot])
    norms = [math.sqrt(sum(c[i] ** 2 for c in crit)) or 1.0 for i in range(5)]
    return [sum(0.2 * c[i] / norms[i] for i in range(5)) for c in crit]


def test_saliency_matches_reference() -> None:
    rng = random.Random(0)
    for _ in range(30):
        n = rng.randint(1, 12)
        xs = [[rng.gauss(0, 1) for _ in range(rng.randint(1, 7))] for _ in range(n)]
        gs = [[rng.gauss(0, 1) for _ in x] for x in xs]
        if n > 2:
            xs[1] = [0.0] * len(xs[1])  # a zero unit: cos is 0
        t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        got = saliency_scores(
            t([sum(v * v for v in x) for x in xs]),
            t([sum(a * b for a, b in zip(x, g)) for x, g in zip(xs, gs)]),
            t([sum(v * v for v in g) for g in gs]),
            torch.tensor([len(x) for x in xs]),
        )
        assert got.tolist() == pytest.approx(ref_scores(xs, gs), rel=1e-9, abs=1e-12)


def ref_select(scores: list[float], group: list[int], alive: list[bool], quota: int, g: int) -> set[int]:
    """Greedy: repeatedly take the group whose next block has the lowest mean (ties: lower group)."""
    queues: dict[int, list[int]] = {}
    for u in sorted(range(len(scores)), key=lambda u: (scores[u], u)):
        if alive[u]:
            queues.setdefault(group[u], []).append(u)
    chosen: set[int] = set()
    while True:
        best = None
        for grp in sorted(queues):
            q = queues[grp]
            n = len(q)
            keep = g if n >= g else n
            if n - keep <= 0:
                continue
            size = n % g or g  # a leading remainder block, then blocks of g
            mean = sum(scores[u] for u in q[:size]) / size
            if best is None or mean < best[0]:
                best = (mean, grp, size)
        if best is None or len(chosen) + best[2] > quota:
            return chosen
        _, grp, size = best
        chosen.update(queues[grp][:size])
        queues[grp] = queues[grp][size:]


@pytest.mark.parametrize("divisible", [1, 2, 3])
def test_selection_matches_greedy_reference(divisible: int) -> None:
    rng = random.Random(divisible)
    for _ in range(150):
        sizes = [rng.randint(1, 9) for _ in range(rng.randint(1, 5))]
        group = [k for k, n in enumerate(sizes) for _ in range(n)]
        n = len(group)
        scores = [rng.random() for _ in range(n)]
        alive = [rng.random() > 0.2 for _ in range(n)]
        quota = rng.randint(0, n)
        got = select_units(
            torch.tensor(scores, dtype=torch.float64), torch.tensor(group), torch.tensor(alive), quota,
            divisible=divisible,
        )  # fmt: skip
        want = ref_select(scores, group, alive, quota, divisible)
        assert set(got.nonzero().squeeze(1).tolist()) == want
        assert not bool((got & ~torch.tensor(alive)).any())


def test_selection_keeps_divisible_units_per_group() -> None:
    group = torch.tensor([0] * 8 + [1] * 6 + [2] * 2)
    scores = torch.rand(16, dtype=torch.float64)
    alive = torch.ones(16, dtype=torch.bool)
    sel = select_units(scores, group, alive, 16, divisible=4)
    left = torch.bincount(group[~sel], minlength=3).tolist()
    assert left == [4, 4, 2]  # 8 -> 4, 6 -> 4 (remainder block of 2), 2 < 4: untouched
    sel = select_units(scores, group, alive, 100)
    assert torch.bincount(group[~sel], minlength=3).tolist() == [1, 1, 1]
    # within a group the lowest scores go first
    for k in range(3):
        members = (group == k).nonzero().squeeze(1)
        gone, kept = scores[members[sel[members]]], scores[members[~sel[members]]]
        assert gone.numel() == 0 or float(gone.max()) <= float(kept.min())
