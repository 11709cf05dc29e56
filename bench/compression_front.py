"""Pareto fronts of the compression benchmark: interpolation and the "BOPs at equal quality" ratio.

A point is ``(bops, q)``: relative BOPs and a quality where larger is better (accuracy, or minus
the perplexity). The pipeline's front is the set of its non-dominated points (`pareto`), read
linearly in log BOPs between them (`bops_at`, `quality_at`). geta's points are compared one by
one (`ratio_at`: the pipeline's BOPs at geta's quality ÷ geta's BOPs) and over the part of the
front that matters (`front_summary`: the points at or below a BOPs limit, the pipeline's 4-bit
point in the benchmark).

>>> front = pareto([(1.0, 90.0), (4.0, 99.0), (2.0, 80.0)])  # (2, 80) is dominated by (1, 90)
>>> front, bops_at(front, 94.5)  # half-way in quality: half-way in log BOPs
([(1.0, 90.0), (4.0, 99.0)], 2.0)
>>> ratio_at(front, (0.5, 94.5))  # geta reaches 94.5 at 0.5: the pipeline needs 2.0
(4.0, 'exact')
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass

__all__ = ["FrontSummary", "bops_at", "front_summary", "is_above", "pareto", "quality_at", "ratio_at"]

Point = tuple[float, float]  # (relative BOPs, quality: larger is better)


def pareto(points: list[Point]) -> list[Point]:
    """(bops, q) points not dominated (lower BOPs and higher quality), by increasing BOPs."""
    front: list[Point] = []
    for b, a in sorted(points):
        if front and b == front[-1][0]:  # the same BOPs, better quality: it replaces the last
            front[-1] = (b, a)
        elif not front or a > front[-1][1]:
            front.append((b, a))
    return front


def _log_lerp(b0: float, b1: float, w: float) -> float:
    return math.exp(math.log(b0) + w * (math.log(b1) - math.log(b0)))


def bops_at(front: list[Point], q: float) -> float | None:
    """The front's BOPs at quality ``q``, linear in log BOPs between points; None outside."""
    for (b0, a0), (b1, a1) in itertools.pairwise(front):
        if a0 <= q <= a1:
            return _log_lerp(b0, b1, 0.0 if a1 == a0 else (q - a0) / (a1 - a0))
    if len(front) == 1 and front[0][1] == q:
        return front[0][0]
    return None  # outside the front: better than its best point or worse than its cheapest


def quality_at(front: list[Point], bops: float) -> float | None:
    """The front's quality at ``bops`` (linear in log BOPs between points); its best quality
    beyond its last point; None below its cheapest point (the front has nothing that cheap)."""
    if not front or bops < front[0][0]:
        return None
    for (b0, a0), (b1, a1) in itertools.pairwise(front):
        if b0 <= bops <= b1:
            return a0 + (a1 - a0) * (math.log(bops / b0) / math.log(b1 / b0))
    return front[-1][1]


def ratio_at(front: list[Point], point: Point) -> tuple[float, str]:
    """The front's BOPs at ``point``'s quality ÷ ``point``'s BOPs, and how exact that is.

    ``'exact'``: interpolated on the front; ``'lower'``: the point beats the front's best quality,
    so the front's most expensive BOPs give a lower bound; ``'upper'``: the point is worse than the
    front's cheapest, whose BOPs give an upper bound. NaN and ``'none'`` for an empty front.
    """
    if not front:
        return math.nan, "none"
    bops, q = point
    at = bops_at(front, q)
    if at is not None:
        return at / bops, "exact"
    if q > front[-1][1]:
        return front[-1][0] / bops, "lower"
    return front[0][0] / bops, "upper"


def is_above(front: list[Point], point: Point) -> bool:
    """True when ``point`` is at or above the front at its BOPs (or the front has nothing that cheap)."""
    q = quality_at(front, point[0])
    return q is None or point[1] >= q


@dataclass(frozen=True)
class FrontSummary:
    """geta's points against the pipeline's front, over the points at or below ``limit`` BOPs."""

    ratios: list[tuple[float, str]]  # `ratio_at` of every point, in the given order
    median: float  # median ratio over the points at or below the limit (NaN if none)
    above: bool  # every point at or below the limit is at or above the front
    counted: int  # how many points were at or below the limit


def front_summary(front: list[Point], points: list[Point], limit: float) -> FrontSummary:
    """Ratios of ``points`` to ``front``, their median and "at or above" over BOPs <= ``limit``."""
    ratios = [ratio_at(front, p) for p in points]
    inside = [(r, p) for r, p in zip(ratios, points) if p[0] <= limit]
    values = [r[0] for r, _ in inside if not math.isnan(r[0])]
    median = statistics.median(values) if values else math.nan
    return FrontSummary(ratios, median, all(is_above(front, p) for _, p in inside), len(inside))
