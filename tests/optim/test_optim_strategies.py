"""Forget and bit rules chosen by name (`geta.optim.strategies`): a rule defined and registered in
this file alone runs in QASSO by name and is a choice of the CLI's ``--forget`` / ``--bit-rule``."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from optim_models import batches, mlp_plan, train_step
from torch import Tensor

from geta import Config
from geta.cli.compress import add_parser, options_from_args
from geta.cli.errors import CliError
from geta.errors import ConfigError
from geta.optim import QASSO, Schedule, Stage, rules, strategies
from geta.optim.strategies import BitContext, BitRule, Forget

SCHEDULE = Schedule(warmup=2, projection=4, joint=8, cooldown=3, projection_periods=2, pruning_periods=2)
CONFIG = Config(target_sparsity=0.5, weight_bits=(4, 8), init_bits=12)


class HalfForget:
    """A toy forget rule: γ = 1/2 for every unit not already zero; it records the t it saw."""

    needs_grad = False

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def rate(
        self, grad_sq: Tensor, c_sq: Tensor, c_dot: Tensor, *, lr: float, period_len: int, t: int
    ) -> Tensor:
        self.seen.append((t, period_len))
        return torch.where(c_sq > 0, torch.full_like(c_sq, 0.5), torch.zeros_like(c_sq))


class MyLinear:
    """The built-in linear rule written again from the pure rule: must give the same run."""

    needs_grad = False

    def rate(
        self, grad_sq: Tensor, c_sq: Tensor, c_dot: Tensor, *, lr: float, period_len: int, t: int
    ) -> Tensor:
        return rules.linear_forget_rate(c_sq, period_len=period_len, t=t)


class LowestBits:
    """A toy bit rule: from the projection stage on every quantizer is pinned to its lowest bits."""

    def __init__(self, context: BitContext) -> None:
        self.table = context.table

    def pins(self, stage: Stage) -> bool:
        return stage in (Stage.PROJECTION, Stage.JOINT)

    def forget_bounds(self, schedule: Schedule, s: int) -> Tensor | None:
        return None

    def observe(self) -> None:
        pass

    def bound(self, schedule: Schedule, stage: Stage, s: int) -> None:
        self.table.reset_to_(self.table.b_lo)

    def settle(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Rules registered in a test disappear after it (the registries are module-global)."""
    monkeypatch.setattr(strategies, "_FORGET", dict(strategies._FORGET))
    monkeypatch.setattr(strategies, "_BITS", dict(strategies._BITS))
    yield


def _run(forget: object = "linear", bits: object = "budget", seed: int = 0) -> tuple[QASSO, list[Tensor]]:
    plan = mlp_plan(CONFIG, weights=True, seed=seed)
    opt = QASSO(plan, lr=0.05, lr_quant=1e-3, momentum=0.9, schedule=SCHEDULE, forget=forget, bits=bits)
    for x, y in batches(plan, SCHEDULE.total):
        train_step(plan, opt, x, y)
    return opt, [p.detach().clone() for p in plan.model.parameters()]


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["compress", "--out", "x", *argv])


def test_a_registered_forget_rule_runs_by_name(registry: None) -> None:
    rule = strategies.register_forget_rule("half", HalfForget())
    opt, _ = _run(forget="half")
    assert opt.forget == "half" and opt.forget_rule is rule
    joint_steps = [SCHEDULE.stage_at(s) for s in range(SCHEDULE.total)].count(Stage.JOINT)
    assert len(rule.seen) == joint_steps  # called once per joint step (every period selects units)
    assert all(0 <= t < T for t, T in rule.seen)
    target = math.floor(0.5 * opt.plan.num_prunable_units + 0.5)
    assert int(opt.committed.sum()) == target


def test_a_forget_rule_is_all_that_decides_gamma(registry: None) -> None:
    strategies.register_forget_rule("my-linear", MyLinear())
    _, mine = _run(forget="my-linear")
    _, builtin = _run(forget=Forget.LINEAR)
    assert all(torch.equal(a, b) for a, b in zip(mine, builtin, strict=True))


def test_a_registered_bit_rule_runs_by_name(registry: None) -> None:
    strategies.register_bit_rule("lowest", LowestBits)
    opt, _ = _run(bits="lowest")
    assert opt.bit_rule == "lowest" and isinstance(opt.bits, LowestBits)
    assert opt.frozen_bits is not None and torch.equal(opt.frozen_bits, opt.table.b_lo)


def test_registered_rules_are_cli_choices(registry: None) -> None:
    strategies.register_forget_rule("half", HalfForget())
    strategies.register_bit_rule("lowest", LowestBits)
    qasso = options_from_args(_parse("--forget", "HALF", "--bit-rule", "lowest")).arguments("qasso")
    assert (qasso["forget"], qasso["bits"]) == ("half", "lowest")
    with pytest.raises(CliError, match="--forget must be one of linear, descent, half"):
        options_from_args(_parse("--forget", "quarter"))


def test_unknown_names_and_enum_members() -> None:
    assert strategies.forget_rule_names()[:2] == ("linear", "descent")
    assert strategies.bit_rule_names()[:2] == ("budget", "descent")
    assert strategies.forget_rule(Forget.DESCENT) is strategies.forget_rule("descent")
    assert strategies.bit_rule(BitRule.BUDGET) is strategies.bit_rule("budget")
    with pytest.raises(ConfigError, match=r"QASSO\(forget='quarter'\) must be one of \['linear', 'descent'"):
        strategies.forget_rule("quarter")
    with pytest.raises(ConfigError, match=r"QASSO\(bits='x'\) must be one of \['budget', 'descent'"):
        strategies.bit_rule("x")
    with pytest.raises(ConfigError, match="lower-case"):
        strategies.register_forget_rule("Half", HalfForget())


def test_the_contributing_example_runs(registry: None) -> None:
    """The forget-rule example of docs/contributing.md, run as written."""
    doc = Path(__file__).parents[2] / "docs" / "contributing.md"
    section = doc.read_text(encoding="utf-8").split("## Add a forget rule", 1)[-1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "docs/contributing.md lost its forget-rule example"
    torch.manual_seed(0)
    exec(compile(blocks[0], str(doc), "exec"), {})  # the repository's own docs
    assert "half-life" in strategies.forget_rule_names()
    assert options_from_args(_parse("--forget", "half-life")).arguments("qasso")["forget"] == "half-life"
