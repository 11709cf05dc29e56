"""`geta.prepare` with ``act_bits`` quantizes attention's q·kᵀ and p·v on the zoo's attention
models (found from the graph by `geta.graph.activation_products`, bound by module), keeps the
search space and zero-invariance, and QASSO keeps their bits inside ``Config.act_bits``."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations

import geta
from geta.optim import QASSO, Schedule, Stage
from geta.plan import QuantTarget
from geta.quant import LearnableQuantizer, product_quantizers
from geta.testing import max_relative_error, model_outputs, zero_random_groups, zoo

# zoo model -> its attention modules (the modules that run q·kᵀ and p·v)
ATTENTION = {
    "mha": ["attn"],
    "transformer_pre_ln": ["enc.layers.0.self_attn", "enc.layers.1.self_attn"],
    "hf_llama": ["model.layers.0.self_attn", "model.layers.1.self_attn"],
    "hf_llama_sdpa": ["model.layers.0.self_attn", "model.layers.1.self_attn"],
    "hf_bert": ["bert.encoder.layer.0.attention.self", "bert.encoder.layer.1.attention.self"],
    "hf_gpt2": ["transformer.h.0.attn", "transformer.h.1.attn"],
    "hf_vit": ["vit.layers.0.attention", "vit.layers.1.attention"],
}
CONFIG = geta.Config(weight_bits=(4, 8), act_bits=(4, 8))


def _build(name: str) -> tuple[nn.Module, object]:
    entry = zoo.ZOO[name]
    if not entry.available:
        pytest.skip(f"{name} needs {entry.needs}")
    return zoo.build(name)


def _products(plan: geta.Plan) -> dict[str, LearnableQuantizer]:
    return {n: q for n, q in plan.quantizers.items() if ".qk." in n or ".pv." in n}


@pytest.mark.parametrize("name", list(ATTENTION))
def test_attention_operands_get_calibrated_named_quantizers(name: str) -> None:
    model, inputs = _build(name)
    plan = geta.prepare(model, inputs, CONFIG)
    found = _products(plan)
    expected = {f"{m}.{op}" for m in ATTENTION[name] for op in ("qk.q", "qk.k", "pv.p", "pv.v")}
    assert set(found) == expected
    for b in plan.bindings:
        if b.name in found:
            assert b.target is QuantTarget.INPUT and b.module is model.get_submodule(b.name.rsplit(".", 2)[0])
            assert b.quantizer.signed == (not b.name.endswith(".pv.p"))  # softmax weights: unsigned
            peak = float(b.quantizer.qmax.detach())  # calibrated on the example inputs
            assert 0 < peak <= 1.0 if b.name.endswith(".pv.p") else peak != 1.0
            assert b.quantizer.bit_width == pytest.approx(CONFIG.init_bits)


def test_weight_products_get_no_product_quantizers() -> None:
    model, inputs = zoo.build("functional")  # torch.matmul(h, self.w2): a parameter operand
    plan = geta.prepare(model, inputs, CONFIG)
    assert not _products(plan) and all(product_quantizers(m) is None for m in model.modules())


def test_no_product_quantizers_without_act_bits() -> None:
    model, inputs = zoo.build("mha")
    geta.prepare(model, inputs, geta.Config(weight_bits=(4, 8)))
    assert type_before_parametrizations(model.attn) is nn.MultiheadAttention  # torch's own forward
    assert all(product_quantizers(m) is None for m in model.modules())


@pytest.mark.parametrize("name", ["mha", "transformer_pre_ln", "hf_llama_sdpa"])
def test_search_space_is_that_of_the_float_model(name: str) -> None:
    model, inputs = _build(name)
    weights_only = geta.prepare(model, inputs, geta.Config(weight_bits=(4, 8)))
    model, inputs = _build(name)
    plan = geta.prepare(model, inputs, CONFIG)
    assert [g.size for g in plan.prunable_groups] == [g.size for g in weights_only.prunable_groups]
    again = geta.prepare(model, inputs, CONFIG)  # a model that already carries its quantizers
    assert [g.size for g in again.prunable_groups] == [g.size for g in plan.prunable_groups]
    assert {n: id(q) for n, q in again.quantizers.items()} == {n: id(q) for n, q in plan.quantizers.items()}


@pytest.mark.parametrize("name", ["mha", "hf_llama_sdpa", "hf_gpt2"])
def test_convert_keeps_product_quantizers_and_equals_the_zeroed_model(name: str) -> None:
    model, inputs = _build(name)
    plan = geta.prepare(model, inputs, CONFIG)
    for q in plan.quantizers.values():
        q.set_bits(4)
    assert zero_random_groups(plan, fraction=0.5, seed=0) > 0
    small = geta.convert(model, plan)
    assert max_relative_error(model_outputs(small, inputs), model_outputs(model, inputs)) <= 1e-4
    holders = [product_quantizers(small.get_submodule(m)) for m in ATTENTION[name]]
    assert all(h is not None and [round(q.bit_width) for q in h.quantizers()] == [4] * 4 for h in holders)


def test_a_second_prepare_without_act_bits_still_binds_carried_product_quantizers() -> None:
    model, inputs = zoo.build("mha")
    first = geta.prepare(model, inputs, CONFIG)
    again = geta.prepare(model, inputs, geta.Config(weight_bits=(4, 8)))
    assert {n: id(q) for n, q in again.quantizers.items()} == {n: id(q) for n, q in first.quantizers.items()}


class _RawAttention(nn.Module):
    """Calls torch's functional multi-head attention: its sdpa runs inside one opaque call."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.mha = nn.MultiheadAttention(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (T, B, 8)
        h, m = self.inp(x), self.mha
        return F.multi_head_attention_forward(
            h, h, h, 8, 2, m.in_proj_weight, m.in_proj_bias, None, None, False, 0.0,
            m.out_proj.weight, m.out_proj.bias, need_weights=False,
        )[0]  # fmt: skip


class _Inner(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x @ x.transpose(-1, -2), -1) @ x  # (B, T, T) @ (B, T, 8)


class _Nested(nn.Module):
    """Products of its own around a submodule with products of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.inner = nn.Linear(8, 8), _Inner()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        return self.inner(h) + (h @ h.transpose(-1, -2)) @ h


@pytest.mark.parametrize(
    ("model", "inputs", "message", "quantized"),
    [
        (_RawAttention(), (torch.randn(5, 2, 8),), "inside a call geta cannot see into", []),
        (_Nested(), (torch.randn(2, 5, 8),), r"modules inside it \(inner\)", ["inner"]),
    ],
    ids=["opaque-call", "nested"],
)
def test_products_geta_cannot_reach_stay_float_with_a_warning(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], message: str, quantized: list[str]
) -> None:
    with pytest.warns(UserWarning, match=f"products of the model stay in float: .*{message}"):
        plan = geta.prepare(model, inputs, CONFIG)
    assert sorted({n.rsplit(".", 2)[0] for n in _products(plan)}) == quantized
    assert product_quantizers(model) is None


def test_exclude_quant_patterns_reach_product_operands() -> None:
    model, inputs = zoo.build("mha")
    plan = geta.prepare(
        model, inputs, geta.Config(weight_bits=(4, 8), act_bits=(4, 8), exclude_quant=("*.pv.p",))
    )
    assert set(_products(plan)) == {"attn.qk.q", "attn.qk.k", "attn.pv.v"}
    model, inputs = zoo.build("mha")
    plan = geta.prepare(
        model, inputs, geta.Config(weight_bits=(4, 8), act_bits=(4, 8), exclude_quant=("attn",))
    )
    assert not _products(plan) and product_quantizers(model.attn) is None


@pytest.mark.parametrize("name", ["mha", "hf_llama_sdpa"])
def test_qasso_keeps_product_bits_in_the_activation_range(name: str) -> None:
    model, inputs = _build(name)
    plan = geta.prepare(model, inputs, geta.Config(target_sparsity=0.5, weight_bits=(2, 8), act_bits=(5, 6)))
    schedule = Schedule(warmup=1, projection=2, joint=4, cooldown=2, projection_periods=2, pruning_periods=2)
    opt = QASSO(plan, lr=0.01, momentum=0.9, schedule=schedule, grad_clip=1.0)
    model.train()
    for _ in range(schedule.total):
        out = model(**inputs) if isinstance(inputs, dict) else model(*inputs)
        loss = (out.logits if hasattr(out, "logits") else out).float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert opt.stage is Stage.COOLDOWN
    bits = {n: q.bit_width for n, q in _products(plan).items()}
    assert len(bits) == 4 * len(ATTENTION[name])
    assert all(5 - 1e-4 <= b <= 6 + 1e-4 for b in bits.values()), bits
    assert any(q.step.grad is not None for q in _products(plan).values())  # they are learned
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = geta.convert(model, plan)
    assert max_relative_error(model_outputs(small, inputs), model_outputs(model, inputs)) <= 1e-4


class _Halves(nn.Module):
    """One ReLU output cut in two ways: a part of a non-negative tensor is non-negative."""

    def __init__(self, cut: str) -> None:
        super().__init__()
        self.cut, self.stem, self.fc1, self.fc2 = cut, nn.Linear(4, 8), nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        a, b = torch.chunk(h, 2, dim=-1) if self.cut == "chunk" else torch.split(h, 4, dim=-1)
        return self.fc1(a) + self.fc2(-b)


@pytest.mark.parametrize("cut", ["chunk", "split"])
def test_input_signs_follow_every_part_op(cut: str) -> None:
    """Every op declaring `Trait.PART` is looked through alike (the tuple item of a split was once
    missed: both inputs stayed signed)."""
    plan = geta.prepare(_Halves(cut), (torch.randn(2, 4),), geta.Config(act_bits=(4, 8)))
    signed = {b.name: b.quantizer.signed for b in plan.bindings if b.target is QuantTarget.INPUT}
    assert signed == {"stem.input": True, "fc1.input": False, "fc2.input": True}
