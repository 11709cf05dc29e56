"""Bits in the CLI's records come from the plan's quantizer bindings, never from names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import geta
from geta.cli.outputs import quantizer_bits
from geta.cli.progress import mean_bits
from geta.plan import QuantTarget


class _Attention(nn.Module):
    """Self-attention (weight ``in_proj_weight``, not ``weight``) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))


@pytest.fixture
def plan() -> geta.Plan:
    model = _Attention().eval()
    in_proj = model.attn.in_proj_weight  # the parameter itself (prepare parametrizes the attribute)
    plan = geta.prepare(model, (torch.randn(2, 5, 8),), geta.Config(weight_bits=(2, 8)))
    for b in plan.bindings:  # 7 bits for the fused q/k/v weight, 3 for every other quantizer
        b.quantizer.set_bits(7.0 if b.tensor is in_proj else 3.0)
    return plan


def test_mean_weight_bits_count_every_weight_quantizer(plan: geta.Plan) -> None:
    # three weights: attn.in_proj_weight (7 bits), attn.out_proj.weight and head.weight (3 bits)
    assert mean_bits(plan) == {"weight_bits": pytest.approx((7 + 3 + 3) / 3, abs=1e-4)}


def test_report_bits_are_filed_by_target(plan: geta.Plan) -> None:
    bits = quantizer_bits(plan)
    assert set(bits) == {"weight", "input"}  # no kind named after an attribute (in_proj_weight)
    assert sorted(bits["weight"].values()) == [3, 3, 7] and bits["input"] == {}


def test_input_quantizers_are_filed_as_inputs() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    plan = geta.prepare(model, (torch.randn(3, 4),), geta.Config(weight_bits=(2, 8), act_bits=(2, 8)))
    for b in plan.bindings:
        b.quantizer.set_bits(5.0 if b.target is QuantTarget.INPUT else 3.0)
    bits = quantizer_bits(plan)
    assert set(bits["input"].values()) == {5} and set(bits["weight"].values()) == {3}
    assert len(bits["input"]) == 2 and mean_bits(plan)["input_bits"] == pytest.approx(5.0, abs=1e-4)
