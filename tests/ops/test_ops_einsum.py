"""``torch.einsum``: letters are positions shared by the operands; contractions as in matmul.

Before this handler einsum had none, and every channel it touched was frozen (MaxViT's
attention: 132 groups). A letter contracted between an activation and a weight is a layer's
input (prunable, like linear); letters of a product of two activations are frozen except the
batch-like ones both keep in the output (the heads of attention).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import geta
from geta.testing import max_relative_error, model_outputs, zero_random_groups


class EinsumMLP(nn.Module):
    """Two linear layers written as einsums, weights held as plain parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(12, 6))  # (hidden, in)
        self.w2 = nn.Parameter(torch.randn(3, 12))  # (out, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(torch.einsum("bld,hd->blh", x, self.w1))
        return torch.einsum("blh,oh->blo", h, self.w2)


class EinsumAttention(nn.Module):
    """Multi-head self-attention whose two products are einsums; heads follow the q rows."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.hd = dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, -1, self.hd).transpose(1, 2) for p in (self.q, self.k, self.v))
        scores = torch.einsum("bhid,bhjd->bhij", q, k) / self.hd**0.5  # (B, H, T, T)
        out = torch.einsum("bhij,bhjd->bhid", scores.softmax(-1), v)  # (B, H, T, hd)
        return self.o(out.transpose(1, 2).reshape(b, t, -1))


def _convert_equals_zeroed(model: nn.Module, inputs: tuple[torch.Tensor, ...], plan: geta.Plan) -> nn.Module:
    assert zero_random_groups(plan, fraction=0.5, seed=0) > 0
    ref = model_outputs(model, inputs)
    small = geta.convert(model, plan)
    assert max_relative_error(model_outputs(small, inputs), ref) <= 1e-4
    return small


def test_einsum_with_a_weight_is_a_layer_whose_units_prune() -> None:
    model, inputs = EinsumMLP(), (torch.randn(2, 5, 6),)
    plan = geta.prepare(model, inputs)
    (hidden,) = [g for g in plan.groups if g.size == 12]
    assert hidden.prunable, hidden.reason
    small = _convert_equals_zeroed(model, inputs, plan)
    assert small.w1.shape[0] == small.w2.shape[1] < 12


@pytest.mark.parametrize("act_bits", [None, (4, 8)])
def test_einsum_attention_heads_prune_and_their_insides_freeze(act_bits: tuple[int, int] | None) -> None:
    model, inputs = EinsumAttention().eval(), (torch.randn(2, 5, 16),)
    plan = geta.prepare(model, inputs, geta.Config(act_bits=act_bits))
    heads = [g for g in plan.groups if any(s.name == "o.weight" and s.dim == 1 for s in g.slices)]
    assert [g.size for g in heads if g.prunable] == [4]  # the heads
    assert all("two activations" in str(g.reason) for g in heads if not g.prunable)  # inside a head
    small = _convert_equals_zeroed(model, inputs, plan)
    assert small.o.in_features < 16
