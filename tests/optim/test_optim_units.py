"""`UnitLayout` against the groups' own row views (`ParamSlice.rows`, `PruneGroup.zero_`)."""

from __future__ import annotations

import pytest
import torch
from optim_models import conv_plan, mlp_plan

from geta import Config
from geta.optim.units import UnitLayout, gather_rows, scatter_rows_add_


@pytest.fixture(params=["mlp", "conv"])
def plan(request: pytest.FixtureRequest):
    build = mlp_plan if request.param == "mlp" else conv_plan
    plan = build(Config(target_sparsity=0.5), weights=True)
    for p in plan.model.parameters():
        p.grad = torch.randn_like(p)
    return plan


def test_unit_stats_match_group_rows(plan) -> None:
    layout = UnitLayout(plan.prunable_groups, lambda t: -1)
    x_sq, xg, g_sq = layout.unit_stats(lambda t: t.grad)
    want_x, want_xg, want_g, want_len = [], [], [], []
    for group in plan.prunable_groups:
        for j in range(group.size):
            x = torch.cat([s.rows()[j] for s in group.slices if s.is_param]).detach().double()
            g = torch.cat([s.rows(s.tensor.grad)[j] for s in group.slices if s.is_param]).double()
            want_x.append(float(x @ x)), want_xg.append(float(x @ g)), want_g.append(float(g @ g))
            want_len.append(x.numel())
    assert x_sq.tolist() == pytest.approx(want_x)
    assert xg.tolist() == pytest.approx(want_xg)
    assert g_sq.tolist() == pytest.approx(want_g)
    assert layout.length.tolist() == want_len
    assert layout.unit_group.tolist() == [
        k for k, g in enumerate(plan.prunable_groups) for _ in range(g.size)
    ]


def test_zero_positions_equal_group_zero(plan) -> None:
    layout = UnitLayout(plan.prunable_groups, lambda t: -1)
    units = torch.zeros(layout.num_units, dtype=torch.bool)
    units[torch.tensor([0, 3, layout.num_units - 1])] = True
    params = [p for p in plan.model.parameters()]
    before = [p.detach().clone() for p in params]
    with torch.no_grad():
        for tensor, dim, pos in layout.zero_positions(units):
            tensor.index_fill_(dim, pos, 0.0)
    mine = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, b in zip(params, before):
            p.copy_(b)
    offset = 0
    for group in plan.prunable_groups:
        group.zero_(units[offset : offset + group.size].nonzero().squeeze(1))
        offset += group.size
    for a, p in zip(mine, params):
        assert torch.equal(a, p.detach())
    assert plan.group_sparsity() == pytest.approx(3 / layout.num_units)


def test_redundant_rows_and_scatter(plan) -> None:
    quant = {id(b.tensor): i for i, b in enumerate(plan.bindings) if b.tensor is not None}
    layout = UnitLayout(plan.prunable_groups, lambda t: quant.get(id(t), -1))
    selected = torch.zeros(layout.num_units, dtype=torch.bool)
    selected[torch.tensor([1, layout.num_units - 2])] = True  # one unit in each hidden group
    rows = layout.redundant(selected, len(plan.bindings))
    assert rows.units.tolist() == selected.nonzero().squeeze(1).tolist()
    union = {id(p): torch.zeros_like(p, dtype=torch.bool) for p in plan.model.parameters()}
    owned = {id(p): torch.zeros_like(p) for p in plan.model.parameters()}
    for rs in rows.slices:
        ref = rs.ref
        local = selected[ref.offset : ref.offset + ref.size].nonzero().squeeze(1)
        view = next(
            s for g in plan.prunable_groups for s in g.slices if s.tensor is ref.tensor and s.dim == ref.dim
        )
        assert torch.equal(gather_rows(ref.tensor.detach(), ref.dim, rs.pos, rs.rows), view.rows()[local])
        assert rows.units[rs.unit].tolist() == (ref.offset + local).tolist()
        if rs.block is not None:  # every block of a quantized slice names its unit and quantizer
            assert rows.block_unit[rs.block].tolist() == rs.unit.tolist()
            assert set(rows.block_layer[rs.block].tolist()) == {ref.quant}
        mask = torch.ones(rs.rows, view.rows().shape[1]) if rs.owned is None else rs.owned
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        union[id(ref.tensor)].index_fill_(ref.dim, rs.pos, True)
        scatter_rows_add_(owned[id(ref.tensor)], ref.dim, rs.pos, mask)
    # the two units meet in the middle layer's weight, and every element has exactly one owner
    assert any(rs.owned is not None for rs in rows.slices)
    for key, m in union.items():
        assert torch.equal(owned[key], m.float())
