"""Mixture-of-Experts: the hidden units of stacked expert weights are prune groups.

A grouped matmul ``(S, K) x (E, K, N)`` is a linear layer with a leading expert dim: its K and N
units prune alike in every expert, in blocks that keep torch's 16-byte stride alignment; the
experts themselves and the router stay whole. Convert equals the zeroed model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import geta
from geta.testing import max_relative_error, model_outputs, zero_random_groups, zoo


def _w(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The parameter itself (`prepare` may parametrize it with a quantizer)."""
    if parametrize.is_parametrized(module, name):
        return getattr(module.parametrizations, name).original
    return getattr(module, name)


def _groups_on(plan: geta.Plan, tensor: torch.Tensor, dim: int) -> list[geta.PruneGroup]:
    return [g for g in plan.groups if any(s.tensor is tensor and s.dim == dim for s in g.slices)]


class GroupedExperts(nn.Module):
    """Three experts in row-major (E, K, N) bfloat16 weights, token blocks fixed by ``offs``.

    (torch's grouped_mm traces in bfloat16 only; transformers falls back to its own op otherwise.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(6, 32), nn.Linear(32, 2)
        self.up = nn.Parameter(torch.randn(3, 32, 48) * 0.3)  # (E, K, N)
        self.down = nn.Parameter(torch.randn(3, 48, 32) * 0.3)
        self.register_buffer("offs", torch.tensor([3, 5, 8], dtype=torch.int32))  # rows of each expert

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (8, 6)
        h = F.grouped_mm(self.inp(x), self.up, offs=self.offs)  # (8, 48)
        h = F.grouped_mm(torch.relu(h), self.down, offs=self.offs)  # (8, 32)
        return self.out(h)


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_grouped_mm_units_prune_in_aligned_blocks(fraction: float) -> None:
    model, inputs = GroupedExperts().to(torch.bfloat16), (torch.randn(8, 6, dtype=torch.bfloat16),)
    plan = geta.prepare(model, inputs)
    hidden = [g for g in _groups_on(plan, model.up, 2) if g.prunable]
    assert [g.size for g in hidden] == [48 // 8]  # 6 blocks of 8 bfloat16 units (16 bytes)
    assert {(id(s.tensor), s.dim) for s in hidden[0].slices} == {(id(model.up), 2), (id(model.down), 1)}
    assert all(s.index.shape[1] == 8 for s in hidden[0].slices)
    assert all(not g.prunable for g in _groups_on(plan, model.up, 0))  # experts stay
    assert sorted(g.size for g in plan.prunable_groups) == [4, 4, 6]  # 32 = 4 blocks, on both sides

    assert zero_random_groups(plan, fraction=fraction, seed=0) > 0
    ref = model_outputs(model, inputs)
    small = geta.convert(model, plan)  # F.grouped_mm raises unless every stride stays aligned
    assert max_relative_error(model_outputs(small, inputs), ref) <= 1e-4
    assert small.up.shape[0] == 3 and small.up.shape[2] < 48 and small.up.shape[2] % 8 == 0


@pytest.mark.parametrize("name", ["hf_mixtral", "hf_qwen2_moe"])
def test_moe_expert_hidden_units_are_groups_and_router_stays(name: str) -> None:
    pytest.importorskip("transformers")
    model, inputs = zoo.build(name)
    plan = geta.prepare(model, inputs, geta.Config(weight_bits=(4, 8), act_bits=(4, 8)))
    for layer in model.model.layers:
        experts, router = layer.mlp.experts, layer.mlp.gate
        hidden = experts.down_proj.shape[2]
        (g,) = [g for g in _groups_on(plan, experts.down_proj, 2) if g.prunable]
        assert g.size == hidden // 4  # blocks of 4 float32 units
        (up,) = [s for s in g.slices if s.tensor is experts.gate_up_proj]
        assert up.dim == 1 and up.index.shape == (hidden // 4, 2 * 4)  # gate and up rows of a block
        assert not any(s.tensor is _w(router) for p in plan.prunable_groups for s in p.slices)

    zero_random_groups(plan, fraction=0.5, seed=0)
    ref = model_outputs(model, inputs)
    small = geta.convert(model, plan)
    assert max_relative_error(model_outputs(small, inputs), ref) <= 1e-4
    for old, new in zip(model.model.layers, small.model.layers):
        e_old, e_new = old.mlp.experts, new.mlp.experts
        assert e_new.gate_up_proj.shape[0] == e_old.gate_up_proj.shape[0]  # no expert removed
        assert _w(new.mlp.gate).shape == _w(old.mlp.gate).shape  # router intact
        assert e_new.down_proj.shape[2] < e_old.down_proj.shape[2]
        assert e_new.gate_up_proj.shape[1] == 2 * e_new.down_proj.shape[2]
