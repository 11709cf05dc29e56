"""`Stage` and `Schedule`: QASSO's four stages as pure functions of the step number.

A run is four consecutive stages (docs/method.md §3.2), counted in optimizer steps::

    | warm-up | projection (B periods) | joint (P pruning periods) | cool-down ... |
    0         W                        W+Pr                       W+Pr+J         W+Pr+J+C

Stepping past the end keeps the cool-down going (the schedule never "runs out").

Periods split a stage as evenly as integers allow: period ``k`` of a stage of ``n`` steps and
``p`` periods starts ``floor(k * n / p)`` steps into the stage, so no period is empty as long
as ``p <= n`` (validated).

The upper bit bound during projection (`Schedule.bit_upper_at`) starts at the quantizers'
initial bits in the first period and reaches the final upper bound in the *last* period, in
equal decrements at the B - 1 period boundaries in between; each bound is rounded half up to
an integer, so the bound is always a whole number of bits. With a single period there is no
boundary to step down at: the final bound holds for the whole projection stage. The joint
stage and the cool-down use the final bound; warm-up does not project (it returns the initial
bits for completeness).

>>> s = Schedule(warmup=2, projection=6, joint=4, cooldown=3, projection_periods=3, pruning_periods=2)
>>> [s.stage_at(i).value for i in (0, 2, 8, 12, 99)]
['warmup', 'projection', 'joint', 'cooldown', 'cooldown']
>>> [s.bit_upper_at(i, init_bits=16, final_bits=8) for i in range(2, 8)]
[16, 16, 12, 12, 8, 8]
>>> [s.pruning_period_at(i) for i in range(7, 13)]
[None, 0, 0, 1, 1, None]
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from geta.errors import ConfigError

__all__ = ["Schedule", "Stage"]


class Stage(enum.Enum):
    """The four stages of a QASSO run, in order."""

    WARMUP = "warmup"  # plain base-direction steps
    PROJECTION = "projection"  # steps + projection of every quantizer onto its bit interval
    JOINT = "joint"  # pruning periods: select, forget, commit (docs/method.md §3.4)
    COOLDOWN = "cooldown"  # bits rounded and frozen; training goes on


def _period_start(k: int, steps: int, periods: int) -> int:
    """Offset of period ``k`` inside a stage of ``steps`` steps split into ``periods``."""
    return k * steps // periods


def _period_index(offset: int, steps: int, periods: int) -> int:
    """The period holding ``offset`` (0 <= offset < steps): the largest k with start <= offset."""
    k = (offset * periods) // steps  # a lower bound of the answer (start_k <= offset)
    while k + 1 < periods and _period_start(k + 1, steps, periods) <= offset:
        k += 1  # at most one correction: starts differ from k*n/p by less than one step
    return k


def _check_count(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"Schedule.{name}={value!r} must be an integer >= {minimum}")


@dataclass(frozen=True)
class Schedule:
    """Step counts of QASSO's four stages and how the projection and joint stages are divided.

    ``projection_periods`` (B) is how many times the upper bit bound is lowered (+1);
    ``pruning_periods`` (P) is how many times a quota of groups is selected and committed.
    A stage with steps must have at least one step per period.

    >>> Schedule(warmup=0, projection=3, joint=0, cooldown=0, projection_periods=4)
    Traceback (most recent call last):
    ...
    geta.errors.ConfigError: Schedule.projection_periods=4 exceeds projection=3 ...
    """

    warmup: int = 0
    projection: int = 0
    joint: int = 0
    cooldown: int = 0
    projection_periods: int = 1
    pruning_periods: int = 1

    def __post_init__(self) -> None:
        for name in ("warmup", "projection", "joint", "cooldown"):
            _check_count(name, getattr(self, name), minimum=0)
        for name, stage in (("projection_periods", "projection"), ("pruning_periods", "joint")):
            _check_count(name, getattr(self, name), minimum=1)
            periods, steps = getattr(self, name), getattr(self, stage)
            if steps > 0 and periods > steps:
                raise ConfigError(
                    f"Schedule.{name}={periods} exceeds {stage}={steps} (steps): every period "
                    f"needs at least one step; pass {name}<={steps} or more {stage} steps"
                )

    @classmethod
    def from_epochs(
        cls,
        *,
        steps_per_epoch: int,
        warmup: int = 0,
        projection: int = 0,
        joint: int = 0,
        cooldown: int = 0,
        projection_periods: int | None = None,
        pruning_periods: int | None = None,
    ) -> Schedule:
        """A schedule given in epochs; periods default to one per epoch of their stage.

        >>> Schedule.from_epochs(steps_per_epoch=10, warmup=1, projection=4, joint=5, cooldown=10)
        Schedule(warmup=10, projection=40, joint=50, cooldown=100, projection_periods=4, pruning_periods=5)
        """
        _check_count("from_epochs(steps_per_epoch)", steps_per_epoch, minimum=1)
        for name, epochs in (("warmup", warmup), ("projection", projection), ("joint", joint)):
            _check_count(f"from_epochs({name})", epochs, minimum=0)
        _check_count("from_epochs(cooldown)", cooldown, minimum=0)
        return cls(
            warmup=warmup * steps_per_epoch,
            projection=projection * steps_per_epoch,
            joint=joint * steps_per_epoch,
            cooldown=cooldown * steps_per_epoch,
            projection_periods=projection_periods if projection_periods is not None else max(projection, 1),
            pruning_periods=pruning_periods if pruning_periods is not None else max(joint, 1),
        )

    # -- stage boundaries ---------------------------------------------------------------------

    @property
    def projection_start(self) -> int:
        return self.warmup

    @property
    def joint_start(self) -> int:
        return self.warmup + self.projection

    @property
    def cooldown_start(self) -> int:
        return self.warmup + self.projection + self.joint

    @property
    def total(self) -> int:
        """Steps of the whole schedule; later steps are cool-down steps too."""
        return self.cooldown_start + self.cooldown

    def stage_at(self, step: int) -> Stage:
        """The stage that step number ``step`` (0-based: the steps taken before it) belongs to."""
        if step < 0:
            raise ValueError(f"Schedule.stage_at: step={step} must be >= 0")
        if step < self.projection_start:
            return Stage.WARMUP
        if step < self.joint_start:
            return Stage.PROJECTION
        if step < self.cooldown_start:
            return Stage.JOINT
        return Stage.COOLDOWN  # includes every step past the schedule's end

    # -- projection -----------------------------------------------------------------------------

    def projection_period_at(self, step: int) -> int | None:
        """Index of the projection period holding ``step``, or None outside the projection stage."""
        if self.stage_at(step) is not Stage.PROJECTION:
            return None
        return _period_index(step - self.projection_start, self.projection, self.projection_periods)

    def bit_upper_at(self, step: int, *, init_bits: int, final_bits: int) -> int:
        """The upper bit bound b_hi in force at ``step`` (see the module docstring).

        >>> Schedule(projection=7, projection_periods=7).bit_upper_at(3, init_bits=16, final_bits=4)
        10
        """
        if final_bits > init_bits:
            raise ConfigError(f"bit_upper_at: final_bits={final_bits} must be <= init_bits={init_bits}")
        stage = self.stage_at(step)
        if stage is Stage.WARMUP:
            return init_bits
        k = self.projection_period_at(step)
        if k is None or self.projection_periods == 1:
            return final_bits  # joint, cool-down, or a single projection period
        # 2) equal decrements at the B-1 inner boundaries, rounded half up to whole bits
        drop = (init_bits - final_bits) * k / (self.projection_periods - 1)
        return init_bits - int(drop + 0.5)

    # -- pruning --------------------------------------------------------------------------------

    def pruning_period_at(self, step: int) -> int | None:
        """Index of the pruning period holding ``step``, or None outside the joint stage."""
        if self.stage_at(step) is not Stage.JOINT:
            return None
        return _period_index(step - self.joint_start, self.joint, self.pruning_periods)

    def pruning_period_bounds(self, period: int) -> tuple[int, int]:
        """(first step, one past the last step) of pruning period ``period``."""
        if not 0 <= period < self.pruning_periods:
            raise ValueError(f"pruning period {period} is not in [0, {self.pruning_periods})")
        start = self.joint_start + _period_start(period, self.joint, self.pruning_periods)
        end = self.joint_start + _period_start(period + 1, self.joint, self.pruning_periods)
        return start, end
