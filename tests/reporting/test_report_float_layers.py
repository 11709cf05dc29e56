"""Ops without a MAC rule: counted by torch's FLOP counter, left-float layers named up front."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import geta
from geta.reporting import report
from geta.reporting.count import layer_costs
from geta.testing import zoo

pytestmark = pytest.mark.filterwarnings("ignore:The tensor attributes")  # export on nn.LSTM's flat weights


def _lstm_macs(lstm: nn.LSTM, batch: int, steps: int) -> int:
    """x·W_ihᵀ + h·W_hhᵀ per step and sample, 4 gates of ``hidden_size`` each (one layer)."""
    gates = 4 * lstm.hidden_size
    return batch * steps * (lstm.input_size * gates + lstm.hidden_size * gates)


@pytest.fixture
def lstm_net() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # export's note about nn.LSTM's flat weights
        return zoo.build("lstm")


def test_float_lstm_is_counted_with_its_macs_and_params(lstm_net: tuple[nn.Module, tuple]) -> None:
    model, x = lstm_net
    r = report(model, x)
    row = next(layer for layer in r.layers if layer.name == "lstm")
    batch, steps, _ = x[0].shape
    assert row.kind == "lstm" and row.source == "flop_counter"
    assert row.macs == _lstm_macs(model.lstm, batch, steps)
    assert row.params == sum(p.numel() for p in model.lstm.parameters()) and r.other_params == 0
    assert (row.weight_bits, row.act_bits) == (32, 32) and row.bops == row.macs * 32 * 32
    assert not r.unknown_ops and r.macs == r.dense_macs and r.relative_bops == 1.0
    assert r.float_layers == []  # nothing is quantized: nothing was left out of a compression


def test_lstm_left_float_in_a_quantized_model_is_named_in_the_headline(lstm_net: tuple) -> None:
    model, x = lstm_net
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = geta.prepare(model, x, geta.Config(weight_bits=(4, 8), act_bits=(4, 8)))
        small = geta.convert(model, plan, verify=False)
        r = report(small, x)
    lstm = next(layer for layer in r.layers if layer.name == "lstm")
    quantized = [layer for layer in r.layers if layer.quantized]
    assert quantized and all(layer.weight_bits < 32 for layer in quantized)
    assert [layer.name for layer in r.float_layers] == ["lstm"]
    # the float LSTM is in the BOPs at 32 · 32 (it dominates them here, so they stay near 100 %)
    assert r.bops == sum(layer.bops for layer in r.layers) and lstm.bops == lstm.macs * 32 * 32
    assert r.relative_bops >= lstm.macs / r.dense_macs
    first = r.to_markdown().splitlines()[0]
    assert "left in float" in first and "lstm" in first and "of the BOPs" in first
    data = json.loads(json.dumps(r.to_dict()))
    assert data["float_layers"] == ["lstm"]


def test_budget_terms_include_the_float_lstm(lstm_net: tuple) -> None:
    model, x = lstm_net
    costs = layer_costs(model, x)
    assert sum(c.macs for c in costs) == report(model, x).macs
    lstm_terms = [c for c in costs if c.weight is model.lstm.weight_ih_l0]
    assert len(lstm_terms) == 1 and lstm_terms[0].weight_quantizer is None


def test_an_op_no_one_can_count_is_named_in_the_headline() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 6)
            self.scale = nn.Parameter(torch.ones(3, 6))  # a matrix parameter, used elementwise

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) * self.scale

    r = report(Scaled(), (torch.randn(3, 6),))
    assert len(r.unknown_ops) == 1 and "mul" in r.unknown_ops[0]
    assert "NOT counted" in r.to_markdown().splitlines()[0]
    assert [layer.name for layer in r.layers] == ["fc"]


def test_attention_products_are_named_by_their_role() -> None:
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(8, 24)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            weights = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1)
            return torch.matmul(weights, v)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = Attention()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x) + torch.bmm(x, x.transpose(1, 2)) @ x  # a product with no softmax

    r = report(Net(), (torch.randn(2, 5, 8),))
    names = [layer.name for layer in r.layers if not layer.weighted]
    assert names[:2] == ["attn:q@k", "attn:attn@v"]
    assert all("q@k" not in n and "attn@v" not in n for n in names[2:]) and len(set(names)) == len(names)


def test_quantizer_bits_above_float_count_as_float() -> None:
    model, x = zoo.build("mlp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = geta.prepare(model, x, geta.Config(weight_bits=(4, 8), act_bits=(4, 8)))
    for quantizer in plan.quantizers.values():
        quantizer.set_bits(53.0)  # a warm-up quantizer grows freely: its grid is finer than float32
    r = report(model, x)
    assert all(layer.weight_bits == 32 and layer.act_bits == 32 for layer in r.layers if layer.quantized)
    assert r.relative_bops <= 1.0  # never more than the float model (the warm-up once showed 184 %)
