"""The method choices of QASSO's joint stage as strategies chosen by name: forget and bit rules.

A *forget rule* (`ForgetStrategy`) gives the forget rate γ of every selected unit during a pruning
period; a *bit rule* (`BitStrategy`) chooses each quantizer's bit width over the run. `QASSO`
looks a rule up by name (``QASSO(forget="linear", bits="budget")``) and calls it through its
protocol, never by branching on which rule it is; the CLI's ``--forget`` and ``--bit-rule``
choices are the registered names. A new rule is one `register_forget_rule` /
`register_bit_rule` call next to its code (docs/contributing.md).

The built-in rules, defaults first (the compression benchmark's choices, docs/benchmarks.md;
the paper's rules stay selectable for comparison, docs/method.md §3.5):

- forget ``"linear"``: γ = 1/(T - t), ``"descent"``: the paper's descent-safe γ;
- bits ``"budget"``: allocated by measured sensitivity under a BOPs budget
  (`geta.optim.allocation.BudgetBits`), ``"descent"``: steps learned by gradient and set by the
  forgetting step rule (`DescentBits`).

>>> forget_rule_names(), bit_rule_names()
(('linear', 'descent'), ('budget', 'descent'))
>>> forget_rule(Forget.DESCENT).needs_grad, forget_rule("linear").needs_grad
(True, False)
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Protocol

from torch import Tensor

from geta.errors import ConfigError
from geta.optim import rules
from geta.optim.allocation import BudgetBits
from geta.optim.bit_context import BitContext
from geta.optim.schedule import Schedule, Stage

__all__ = [
    "BitContext",
    "BitFactory",
    "BitRule",
    "BitStrategy",
    "BudgetBits",
    "DescentBits",
    "DescentForget",
    "Forget",
    "ForgetStrategy",
    "LinearForget",
    "bit_rule",
    "bit_rule_names",
    "forget_rule",
    "forget_rule_names",
    "register_bit_rule",
    "register_forget_rule",
]


class Forget(str, enum.Enum):
    """Names of the built-in forget rules (a plain string names any registered rule)."""

    LINEAR = "linear"  # γ = 1/(T - t): rows shrink smoothly to ~1/T of their norm, then commit
    DESCENT = "descent"  # the paper's descent-safe γ (tiny on a trained model: a hard cut)


class BitRule(str, enum.Enum):
    """Names of the built-in bit rules (a plain string names any registered rule)."""

    BUDGET = "budget"  # allocated by measured sensitivity under a BOPs budget (`optim.bits`)
    DESCENT = "descent"  # the paper: steps learned by gradient, set by the forgetting step rule


class ForgetStrategy(Protocol):
    """How fast the selected units shrink: x_R <- x_R - γ (c + d_l r) each joint step.

    ``rate`` gets per-unit float64 vectors (n_R,) of ‖∇‖², ‖c‖², <c, ∇> (∇ the base direction,
    c the clipped values; `geta.optim.forget`), the weights' learning rate, the pruning
    period's length T and the step's index t in it (0 <= t < T), and returns γ (n_R,). A unit
    whose ‖c‖ is ~0 should get γ = 0. With ``needs_grad=False`` the rule promises not to read
    ‖∇‖² and <c, ∇> (they are then zeros), which spares gathering ∇ of the selected rows.
    """

    needs_grad: bool

    def rate(
        self, grad_sq: Tensor, c_sq: Tensor, c_dot: Tensor, *, lr: float, period_len: int, t: int
    ) -> Tensor: ...


class BitStrategy(Protocol):
    """How each quantizer's bits are chosen; QASSO calls the hooks in this order every step.

    1. `pins` (before the update): True when `bound` sets every step this step before anything
       reads it, so the steps are not moved by their gradients;
    2. `forget_bounds` (joint stage, before the update): the upper bits (n_q,) that the
       forgetting's step rule keeps the steps within, or None if forgetting never writes steps;
    3. `observe` (after the update, every stage): fold this step's measurements;
    4. `bound` (projection and joint stages): project or pin the steps into [b_lo, b_hi(s)];
    5. `settle` (every cool-down step, before QASSO freezes round(bits) once): make the bits
       final if the rule has not yet.

    `group_quotas` (optional; the joint stage's first step, before the selection): the units
    every prune group loses when the rule chooses the widths with the bits
    (``Config.chooses_widths``), or None to keep the quotas of ``Config.target_sparsity``. A rule
    without it runs only with a fixed ``target_sparsity`` and no ``target_bops``.

    `state_dict` (None: nothing to keep) and `load_state_dict` make resuming bitwise exact.
    """

    def pins(self, stage: Stage) -> bool: ...
    def forget_bounds(self, schedule: Schedule, s: int) -> Tensor | None: ...
    def observe(self) -> None: ...
    def bound(self, schedule: Schedule, stage: Stage, s: int) -> None: ...
    def settle(self) -> None: ...
    def state_dict(self) -> dict[str, Any] | None: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


BitFactory = Callable[[BitContext], BitStrategy]  # builds a bit rule for one QASSO run

_FORGET: dict[str, ForgetStrategy] = {}
_BITS: dict[str, BitFactory] = {}


def _name(value: object, kind: str) -> str:
    name = value.value if isinstance(value, enum.Enum) else value
    if not isinstance(name, str) or not name or name != name.strip().lower():
        raise ConfigError(f"{kind} rule name {value!r} must be a non-empty lower-case string")
    return name


def register_forget_rule(name: str, rule: ForgetStrategy) -> ForgetStrategy:
    """Make ``rule`` selectable as ``QASSO(forget=name)`` and ``--forget name``; returns it."""
    _FORGET[_name(name, "forget")] = rule
    return rule


def register_bit_rule(name: str, factory: BitFactory) -> BitFactory:
    """Make ``factory(context)`` (e.g. a `BitStrategy` class) selectable as ``QASSO(bits=name)`` and
    ``--bit-rule name``; returns it, so that it can decorate the class."""
    _BITS[_name(name, "bit")] = factory
    return factory


def forget_rule_names() -> tuple[str, ...]:
    """The registered forget rules' names, in registration order (built-ins first)."""
    return tuple(_FORGET)


def bit_rule_names() -> tuple[str, ...]:
    """The registered bit rules' names, in registration order (built-ins first)."""
    return tuple(_BITS)


def _lookup(table: dict[str, Any], value: object, argument: str) -> Any:
    name = value.value if isinstance(value, enum.Enum) else value
    if not isinstance(name, str) or name not in table:
        raise ConfigError(f"QASSO({argument}={value!r}) must be one of {list(table)}")
    return table[name]


def forget_rule(name: str | enum.Enum) -> ForgetStrategy:
    """The forget rule registered as ``name`` (ConfigError naming ``forget`` otherwise)."""
    return _lookup(_FORGET, name, "forget")


def bit_rule(name: str | enum.Enum) -> BitFactory:
    """The factory of the bit rule registered as ``name`` (ConfigError naming ``bits`` otherwise)."""
    return _lookup(_BITS, name, "bits")


# -- the built-in rules ---------------------------------------------------------------------------


class LinearForget:
    """γ = 1/(T - t) for every unit not already zero (`rules.linear_forget_rate`)."""

    needs_grad = False

    def rate(
        self, grad_sq: Tensor, c_sq: Tensor, c_dot: Tensor, *, lr: float, period_len: int, t: int
    ) -> Tensor:
        return rules.linear_forget_rate(c_sq, period_len=period_len, t=t)


class DescentForget:
    """The paper's descent-safe γ, capped at 1/(T - t) (`rules.forget_rate`)."""

    needs_grad = True

    def rate(
        self, grad_sq: Tensor, c_sq: Tensor, c_dot: Tensor, *, lr: float, period_len: int, t: int
    ) -> Tensor:
        return rules.forget_rate(grad_sq, c_sq, c_dot, lr=lr, period_len=period_len, t=t)


class DescentBits:
    """The paper's bit rule: steps learn by gradient, each step is projected onto
    [b_lo, b_hi(s)], and the forgetting's step rule sets the steps of the layers it touches."""

    def __init__(self, context: BitContext) -> None:
        config = context.plan.config
        if config.target_bops is not None:
            raise ConfigError(
                f"Config.target_bops={config.target_bops} needs QASSO(bits='budget'); "
                "the paper's step rule (bits='descent') has no budget"
            )
        if config.target_sparsity is None:
            raise ConfigError(
                "Config.target_sparsity=None (widths chosen under a budget) needs QASSO(bits='budget'); "
                "the paper's step rule (bits='descent') prunes a fixed fraction: set target_sparsity"
            )
        self.table = context.table

    def pins(self, stage: Stage) -> bool:
        return False

    def forget_bounds(self, schedule: Schedule, s: int) -> Tensor | None:
        return self.table.upper(schedule, s)

    def observe(self) -> None:
        pass

    def bound(self, schedule: Schedule, stage: Stage, s: int) -> None:
        self.table.project_(self.table.upper(schedule, s))

    def settle(self) -> None:
        pass

    def group_quotas(self) -> Tensor | None:
        return None

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


register_forget_rule(Forget.LINEAR.value, LinearForget())
register_forget_rule(Forget.DESCENT.value, DescentForget())
register_bit_rule(BitRule.BUDGET.value, BudgetBits)
register_bit_rule(BitRule.DESCENT.value, DescentBits)
