"""`Schedule` against a slow reference that lays out every step of the run in a list."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geta.errors import ConfigError
from geta.optim import Schedule, Stage


def reference_layout(s: Schedule) -> list[tuple[Stage, int | None, int | None]]:
    """(stage, projection period, pruning period) of each step, built by appending runs."""
    steps: list[tuple[Stage, int | None, int | None]] = [(Stage.WARMUP, None, None)] * s.warmup
    for stage, n, periods in ((Stage.PROJECTION, s.projection, s.projection_periods),
                              (Stage.JOINT, s.joint, s.pruning_periods)):  # fmt: skip
        lengths = [(k + 1) * n // periods - k * n // periods for k in range(periods)] if n else []
        for k, length in enumerate(lengths):
            for _ in range(length):
                steps.append((stage, k, None) if stage is Stage.PROJECTION else (stage, None, k))
    steps += [(Stage.COOLDOWN, None, None)] * (s.cooldown + 3)  # 3 steps past the end
    return steps


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    projection, joint = draw(st.integers(0, 12)), draw(st.integers(0, 12))
    return Schedule(
        warmup=draw(st.integers(0, 5)),
        projection=projection,
        joint=joint,
        cooldown=draw(st.integers(0, 5)),
        projection_periods=draw(st.integers(1, max(projection, 1))),
        pruning_periods=draw(st.integers(1, max(joint, 1))),
    )


@settings(max_examples=200, deadline=None)
@given(schedules())
def test_stage_and_periods_match_reference(s: Schedule) -> None:
    for step, (stage, proj_k, prune_k) in enumerate(reference_layout(s)):
        assert s.stage_at(step) is stage
        assert s.projection_period_at(step) == proj_k
        assert s.pruning_period_at(step) == prune_k
        if prune_k is not None:
            start, end = s.pruning_period_bounds(prune_k)
            assert start <= step < end


@settings(max_examples=200, deadline=None)
@given(schedules(), st.integers(2, 16), st.integers(2, 16))
def test_bit_upper_bound_walks_from_init_to_final(s: Schedule, a: int, b: int) -> None:
    init, final = max(a, b), min(a, b)
    layout = reference_layout(s)
    per_period: dict[int, int] = {}
    for step, (stage, k, _) in enumerate(layout):
        hi = s.bit_upper_at(step, init_bits=init, final_bits=final)
        assert isinstance(hi, int) and final <= hi <= init
        if stage is Stage.WARMUP:
            assert hi == init
        elif stage is Stage.PROJECTION:
            assert per_period.setdefault(k, hi) == hi  # constant within a period
        else:
            assert hi == final
    if s.projection:
        bounds = [per_period[k] for k in range(s.projection_periods)]
        assert bounds[-1] == final
        if s.projection_periods > 1:
            assert bounds[0] == init
            drops = [x - y for x, y in itertools.pairwise(bounds)]
            assert all(d >= 0 for d in drops) and max(drops) - min(drops) <= 1  # equal up to rounding
            exact = (init - final) / (s.projection_periods - 1)
            assert all(abs(bounds[k] - (init - k * exact)) <= 0.5 for k in range(len(bounds)))


def test_recipe_bit_walk() -> None:
    s = Schedule(projection=7, projection_periods=7)
    assert [s.bit_upper_at(k, init_bits=16, final_bits=4) for k in range(7)] == [16, 14, 12, 10, 8, 6, 4]


def test_from_epochs() -> None:
    s = Schedule.from_epochs(steps_per_epoch=3, warmup=1, projection=2, joint=4, cooldown=1)
    assert s == Schedule(
        warmup=3, projection=6, joint=12, cooldown=3, projection_periods=2, pruning_periods=4
    )
    assert s.total == 24 and s.stage_at(100) is Stage.COOLDOWN
    s = Schedule.from_epochs(steps_per_epoch=2, joint=3, pruning_periods=6)
    assert s.pruning_periods == 6 and s.projection_periods == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(projection=3, projection_periods=4),  # fewer projection steps than periods
        dict(joint=2, pruning_periods=5),
        dict(warmup=-1),
        dict(cooldown=1.5),
        dict(joint=True),
        dict(projection_periods=0),
    ],
)
def test_bad_schedules_name_the_field(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs)) if "periods" not in str(kwargs) else "periods"):
        Schedule(**kwargs)


def test_bad_queries() -> None:
    s = Schedule(joint=4, pruning_periods=2)
    with pytest.raises(ValueError):
        s.stage_at(-1)
    with pytest.raises(ValueError):
        s.pruning_period_bounds(2)
    with pytest.raises(ConfigError):
        s.bit_upper_at(0, init_bits=4, final_bits=8)
    with pytest.raises(ConfigError):
        Schedule.from_epochs(steps_per_epoch=0, joint=1)
