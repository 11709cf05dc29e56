"""QASSO's joint allocation: with a BOPs budget and no fixed sparsity the run chooses every prune
group's width together with the bits (`Config.chooses_widths`, `geta.optim.widths`)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import geta
from geta import QASSO, Config, Schedule
from geta.errors import ConfigError

SCHEDULE = Schedule(warmup=6, projection=12, joint=16, cooldown=8, projection_periods=2, pruning_periods=4)


class Net(nn.Module):
    """Two hidden layers of equal size; the task (a function of the first 2 inputs) leaves
    many units of each layer redundant, in different numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(12, 48), nn.Linear(48, 24), nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _data(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(32, 12, generator=g)
        out.append((x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()))
    return out


def _run(
    config: Config, steps: range, state: bytes | None = None, *, seed: int = 0
) -> tuple[nn.Module, QASSO]:
    torch.manual_seed(seed)
    model = Net()
    plan = geta.prepare(model, (torch.randn(4, 12),), config)
    opt = QASSO(plan, lr=0.05, lr_quant=1e-3, momentum=0.9, schedule=SCHEDULE)
    if state is not None:
        saved = torch.load(io.BytesIO(state), weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
    data = _data(SCHEDULE.total + 2)
    for s in steps:
        loss = nn.functional.cross_entropy(model(data[s][0]), data[s][1])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


CONFIG = Config(weight_bits=(2, 8), act_bits=(2, 8), target_bops=0.004)


def test_a_budget_alone_chooses_widths_and_bits_and_meets_the_budget() -> None:
    model, opt = _run(CONFIG, range(SCHEDULE.total))
    plan = opt.plan
    sizes = [g.size for g in plan.prunable_groups]
    quota = opt._group_quota.tolist()
    assert sum(quota) > 0 and len({q / n for q, n in zip(quota, sizes)}) > 1, quota  # widths differ
    alive = [int((~g.is_zero()).sum()) for g in plan.prunable_groups]
    assert alive == [n - q for n, q in zip(sizes, quota)]  # exactly the chosen widths
    assert all(b == round(b) and 2 <= b <= 8 for b in opt.frozen_bits.tolist())
    torch.manual_seed(0)
    rep = geta.report(geta.convert(model, plan), (torch.randn(4, 12),), dense=Net())
    assert rep.relative_bops <= 0.004 * (1 + 1e-9)


def test_target_sparsity_with_a_budget_is_a_minimum() -> None:
    loose = Config(weight_bits=(2, 8), act_bits=(2, 8), target_bops=0.05)
    _, free = _run(loose, range(SCHEDULE.total))
    _, held = _run(Config(target_sparsity=0.6, weight_bits=(2, 8), act_bits=(2, 8), target_bops=0.05),
                   range(SCHEDULE.total))  # fmt: skip
    n = held.plan.num_prunable_units
    assert int(held._group_quota.sum()) >= round(0.6 * n) > int(free._group_quota.sum())


def test_resume_across_the_allocation_equals_uninterrupted() -> None:
    total = SCHEDULE.total
    ref_model, ref_opt = _run(CONFIG, range(total))
    for cut in (9, 17, 18, 19, 27):  # projection, the allocation's last observed step, the joint start
        model, opt = _run(CONFIG, range(cut))
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
        model, opt = _run(CONFIG, range(cut, total), buf.getvalue(), seed=5)
        for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
            assert torch.equal(a, b), (cut, name)
        assert torch.equal(ref_opt._group_quota, opt._group_quota)
        assert torch.equal(ref_opt.frozen_bits, opt.frozen_bits)


def test_the_default_budget_is_half_the_unpruned_low_bit_cost() -> None:
    """No target_bops, no target_sparsity: the run prunes and quantizes to DEFAULT_BUDGET x the
    BOPs of the unpruned model at every lower bit bound (2 x 2 bits here: 4/1024 of dense)."""
    from geta.optim.budget import DEFAULT_BUDGET

    model, opt = _run(Config(weight_bits=(2, 8), act_bits=(2, 8)), range(SCHEDULE.total))
    torch.manual_seed(0)
    rep = geta.report(geta.convert(model, opt.plan), (torch.randn(4, 12),), dense=Net())
    assert int(opt._group_quota.sum()) > 0
    assert rep.relative_bops <= DEFAULT_BUDGET * 4 / 1024 * (1 + 1e-9)


def test_rules_and_selections_that_cannot_choose_widths_are_errors() -> None:
    with pytest.raises(ConfigError, match="selection='global' needs a fixed target_sparsity"):
        Config(selection="global")
    Config(selection="global", target_sparsity=0.5)  # a fixed sparsity: fine
    plan = geta.prepare(Net(), (torch.randn(4, 12),), Config(weight_bits=(4, 8)))
    with pytest.raises(ConfigError, match=r"target_sparsity=None .* needs QASSO\(bits='budget'\)"):
        QASSO(plan, lr=0.1, schedule=SCHEDULE, bits="descent")


def test_a_budget_no_width_can_meet_names_the_field_and_the_floors() -> None:
    plan = geta.prepare(
        Net(), (torch.randn(4, 12),), Config(weight_bits=(4, 8), act_bits=(4, 8), target_bops=1e-5)
    )
    with pytest.raises(ConfigError, match=r"target_bops=1e-05 cannot be met.*every prune group at its floor"):
        QASSO(plan, lr=0.1, schedule=SCHEDULE)


def test_unit_costs_count_each_unit_once_from_its_consumers() -> None:
    """c_j = ½ Σ_e g_e² x_e² over the columns that consume unit j (fc2's dim 1 for fc1's units,
    fc3's for fc2's), written out by hand; the producing rows (fc1's) do not add to it."""
    from geta.optim.sensitivity import UnitCosts
    from geta.optim.units import UnitLayout

    torch.manual_seed(0)
    model = Net()
    plan = geta.prepare(model, (torch.randn(4, 12),), Config(target_sparsity=0.5, weight_bits=(4, 8)))
    layout = UnitLayout(plan.prunable_groups, lambda t: -1)
    x, y = _data(1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    consumers = {ref.name: ref.tensor for ref in layout.slices if ref.dim == 1}
    assert sorted(consumers) == ["fc2.weight", "fc3.weight"]
    costs = UnitCosts(layout, {id(t) for t in consumers.values()})
    costs.observe(layout)
    w2, w3 = consumers["fc2.weight"], consumers["fc3.weight"]  # (24, 48), (3, 24): columns consume units
    want = torch.cat([0.5 * (w2 * w2.grad).pow(2).sum(0), 0.5 * (w3 * w3.grad).pow(2).sum(0)]).double()
    sizes = [g.size for g in plan.prunable_groups]
    assert sizes == [48, 24]
    torch.testing.assert_close(costs.mean(), want, rtol=1e-5, atol=1e-12)
