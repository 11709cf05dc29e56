"""Bits in the CLI's records come from the plan's quantizer bindings, never from names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import geta
from geta.cli.job import mean_bits
from geta.cli.outputs import quantizer_bits


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
    plan = geta.prepare(model, (torch.randn(2, 5, 8),), geta.Config(weight_bits=(2, 8), act_bits=(2, 8)))
    for b in plan.bindings:  # 7 bits for the fused q/k/v weight, 3 for every other quantizer
        b.quantizer.set_bits(7.0 if b.tensor is in_proj else 3.0)
    return plan


def test_mean_weight_bits_count_every_weight_quantizer(plan: geta.Plan) -> None:
    # three weights: attn.in_proj_weight (7 bits), attn.out_proj.weight and head.weight (3 bits)
    bits = mean_bits(plan)
    assert bits["weight_bits"] == pytest.approx((7 + 3 + 3) / 3, abs=1e-4)
    assert bits["input_bits"] == pytest.approx(3.0, abs=1e-4)


def test_report_bits_are_filed_by_target(plan: geta.Plan) -> None:
    bits = quantizer_bits(plan)
    assert set(bits) == {"weight", "input"}  # no kind named after an attribute
    assert sorted(bits["weight"].values()) == [3, 3, 7] and set(bits["input"].values()) == {3}
    assert len(bits["weight"]) + len(bits["input"]) == len(plan.quantizers)
