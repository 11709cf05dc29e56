"""`geta.report` (geta.reporting): MACs vs hand-derived formulas, bits from the quantizers, BOPs, sizes."""

from __future__ import annotations

import copy
import json
import math
import pickle
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import geta
from geta.reporting import LayerReport, report, rounded_bits
from geta.testing import zero_random_groups, zoo


def _output_shapes(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[nn.Module, torch.Size]:
    """Output shape of every leaf module during one forward (recorded with forward hooks)."""
    shapes: dict[nn.Module, torch.Size] = {}
    hooks = [m.register_forward_hook(lambda m, a, out: shapes.__setitem__(m, out.shape))
             for m in model.modules() if not list(m.children())]  # fmt: skip
    with torch.no_grad():
        model(*inputs)
    for h in hooks:
        h.remove()
    return shapes


def _expected_macs(module: nn.Module, out: torch.Size, inp: torch.Size | None = None) -> int:
    """The textbook formulas of docs/method.md §4, from the layer's attributes and shapes."""
    if isinstance(module, nn.ConvTranspose2d):  # every input pixel scatters into Cout/g·kh·kw outputs
        assert inp is not None
        n, c_in, h, w = inp
        kh, kw = module.kernel_size
        return n * c_in * h * w * module.out_channels // module.groups * kh * kw
    if isinstance(module, nn.Conv2d):  # N·Cin·Cout·kh·kw·Hout·Wout / groups
        n, c_out, h_out, w_out = out
        kh, kw = module.kernel_size
        return n * module.in_channels * c_out * kh * kw * h_out * w_out // module.groups
    if isinstance(module, nn.Linear):  # tokens·in·out
        tokens = math.prod(out[:-1])
        return tokens * module.in_features * module.out_features
    raise AssertionError(type(module))


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4, bias=False)
        self.up = nn.ConvTranspose2d(12, 6, 2, stride=2, groups=2)
        self.c3 = nn.Conv2d(6, 10, (1, 3), padding=(0, 1))
        self.fc = nn.Linear(10, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c3(F.relu(self.up(F.relu(self.c2(F.relu(self.c1(x)))))))
        return self.fc(y.mean((2, 3)))


def test_conv_net_macs_match_the_formulas() -> None:
    model, x = _ConvNet().eval(), (torch.randn(2, 3, 10, 12),)
    shapes = _output_shapes(model, x)
    inputs = {model.up: shapes[model.c2]}
    r = report(model, x)
    names = dict(model.named_modules())
    assert [layer.name for layer in r.layers] == ["c1", "c2", "up", "c3", "fc"]
    assert [layer.kind for layer in r.layers] == ["conv", "conv", "conv_transpose", "conv", "linear"]
    for layer in r.layers:
        module = names[layer.name]
        assert layer.macs == _expected_macs(module, shapes[module], inputs.get(module))
        assert layer.params == sum(p.numel() for p in module.parameters())
    assert r.macs == sum(layer.macs for layer in r.layers)


@pytest.mark.parametrize("name", ["mlp", "token_mlp"])
def test_mlp_macs_are_tokens_in_out(name: str) -> None:
    model, x = zoo.build(name)
    shapes = _output_shapes(model, x)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    r = report(model, x)
    assert [layer.macs for layer in r.layers] == [_expected_macs(m, shapes[m]) for m in linears]
    other = sum(p.numel() for m in model.modules() if not isinstance(m, nn.Linear)
                for p in m.parameters(recurse=False))  # fmt: skip
    assert r.other_params == other and r.params == sum(p.numel() for p in model.parameters())


class _Attention(nn.Module):
    """Explicit score/value matmuls (two activations) next to a fused sdpa call."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.qkv = heads, nn.Linear(d, 3 * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )  # (B, H, T, hd)
        scores = torch.softmax(q @ k.transpose(-1, -2), -1)  # (B, H, T, T)
        manual = scores @ v  # (B, H, T, hd)
        fused = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, hd)
        return (manual + fused).sum()


def test_attention_matmuls_and_sdpa_are_counted() -> None:
    b, t, d, h = 2, 5, 16, 2
    r = report(_Attention(d, h).eval(), (torch.randn(b, t, d),))
    kinds = [layer.kind for layer in r.layers]
    assert kinds == ["linear", "matmul", "matmul", "attention"]
    hd = d // h
    assert r.layers[0].macs == b * t * d * 3 * d
    assert r.layers[1].macs == b * h * t * t * hd  # q·kᵀ
    assert r.layers[2].macs == b * h * t * t * hd  # scores·v
    assert r.layers[3].macs == 2 * b * h * t * t * hd  # both, fused
    assert all(layer.params == 0 and layer.weight_bits == 32 for layer in r.layers[1:])
    assert [layer.weighted for layer in r.layers] == [True, False, False, False]  # only qkv has a weight


def test_unquantized_model_has_relative_bops_one() -> None:
    model, x = zoo.build("resnet")
    r = report(model, x)
    assert r.macs > 0
    assert r.relative_bops == 1.0 and r.relative_bops_weight_only == 1.0 and r.relative_size == 1.0
    assert all(layer.weight_bits == 32 and layer.act_bits == 32 for layer in r.layers)
    assert r.size_bits == 32 * sum(p.numel() for p in model.parameters())


def test_bits_come_from_the_bound_quantizers() -> None:
    model, x = zoo.build("plain_cnn")
    dense = report(model, x)
    plan = geta.prepare(model, x, geta.Config(weight_bits=(2, 8), act_bits=(2, 8)))
    for i, q in enumerate(plan.quantizers.values()):
        q.set_bits(2 + i % 7)
    r = report(model, x, dense=dense)
    assert [layer.macs for layer in r.layers] == [layer.macs for layer in dense.layers]
    quantizers = plan.quantizers
    for layer in r.layers:
        assert layer.weight_bits == rounded_bits(quantizers[f"{layer.name}.weight"])
        assert layer.act_bits == rounded_bits(quantizers[f"{layer.name}.input"])
        assert layer.bops == layer.macs * layer.weight_bits * layer.act_bits
        weight = dict(model.named_modules())[layer.name].parametrizations.weight.original
        bias = layer.params - weight.numel()
        assert layer.size_bits == weight.numel() * layer.weight_bits + 32 * bias + 2 * 32
    expected = sum(lr.macs * lr.weight_bits * lr.act_bits for lr in r.layers) / (32 * 32 * dense.macs)
    assert r.relative_bops == pytest.approx(expected)
    assert r.relative_bops_weight_only == pytest.approx(
        sum(lr.macs * lr.weight_bits for lr in r.layers) / (32 * dense.macs)
    )
    assert r.relative_bops < r.relative_bops_weight_only < 1


def test_pruned_model_is_measured_against_the_dense_one() -> None:
    model, x = zoo.build("resnet")
    dense = report(model, x)
    plan = geta.prepare(model, x, geta.Config(weight_bits=(4, 8)))
    zero_random_groups(plan, 0.5, seed=0)
    for q in plan.quantizers.values():
        q.set_bits(4)
    small = geta.convert(model, plan)
    by_report, by_model = report(small, x, dense=dense), report(small, x, dense=model)
    assert by_report.dense_macs == by_model.dense_macs == dense.macs
    assert by_report.macs < dense.macs and by_report.params < dense.params
    assert by_report.relative_bops == pytest.approx(by_report.macs * 4 * 32 / (32 * 32 * dense.macs))


def test_tied_weight_is_counted_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(6, 6, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(self.a(x), self.a.weight)  # the same weight twice

    r = report(Tied().eval(), (torch.randn(3, 6),))
    assert [layer.macs for layer in r.layers] == [3 * 36, 3 * 36]
    assert [layer.params for layer in r.layers] == [36, 0] and r.params == 36
    assert r.layers[0].name != r.layers[1].name


def test_embedding_has_no_macs() -> None:
    r = report(*zoo.build("text_classifier"))
    assert r.layers[0].kind == "embedding" and r.layers[0].macs == 0 and r.layers[0].params == 64 * 16
    assert not report(*zoo.build("mlp")).unknown_ops


def test_markdown_and_dict_views() -> None:
    model, x = zoo.build("mlp")
    r = report(model, x)
    text = r.to_markdown()
    assert all(f"| {layer.name} | linear |" in text for layer in r.layers)
    data = json.loads(json.dumps(r.to_dict()))
    assert data["totals"]["macs"] == r.macs and data["totals"]["relative_bops"] == 1.0
    assert data["layers"][0]["bops"] == r.layers[0].bops
    assert (
        LayerReport(**{k: v for k, v in data["layers"][0].items() if k not in ("bops", "bops_weight_only")})
        == r.layers[0]
    )


def test_converted_model_is_reported_against_the_original() -> None:
    model, x = zoo.build("resnet")  # batch 2
    original = report(copy.deepcopy(model), x)  # an untouched copy, measured on its own
    plan = geta.prepare(model, x, geta.Config(weight_bits=(4, 8), act_bits=(4, 8)))
    zero_random_groups(plan, 0.5, seed=0)
    small = geta.convert(model, plan)
    r = report(small, x)  # no dense=: the counts prepare recorded are the reference
    assert (r.dense_macs, r.dense_params) == (original.macs, original.params)
    assert r.macs < original.macs and r.relative_bops == pytest.approx(
        report(small, x, dense=original).relative_bops
    )
    one = tuple(t[:1] for t in x)  # another batch size: MACs scale, parameters do not
    assert report(small, one).dense_macs * 2 == original.macs
    assert report(small, one).dense_params == original.params
    assert report(small, x, dense=small).relative_bops > r.relative_bops  # dense= still decides


def test_dense_counts_are_counts_only_and_work_on_meta() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 10))
    plan = geta.prepare(model, (torch.empty(4, 512, device="meta"),), geta.Config(weight_bits=(4, 8)))
    assert plan.dense is not None
    assert plan.dense.macs == 4 * (512 * 1024 + 1024 * 10) and plan.dense.params == 512 * 1024 + 1024 + 10250
    assert [macs for _, macs in plan.dense.layers] == [4 * 512 * 1024, 4 * 1024 * 10]
    assert len(pickle.dumps(plan.dense)) < 1_000  # numbers, not the 0.5 M parameters


def test_prepare_captures_the_model_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import geta.graph.capture as capture_module

    calls = []
    original = capture_module.capture

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    for name, module in list(sys.modules.items()):  # every geta module that imported it
        if name.startswith("geta") and getattr(module, "capture", None) is original:
            monkeypatch.setattr(module, "capture", counting)
    model, x = zoo.build("mlp")
    geta.prepare(model, x)
    assert len(calls) == 1


def test_carried_counts_refuse_inputs_of_another_shape() -> None:
    model, x = zoo.build("plain_cnn")
    plan = geta.prepare(model, x)
    small = geta.convert(model, plan)
    wider = tuple(torch.randn(*t.shape[:-1], t.shape[-1] + 4) for t in x)
    with pytest.raises(geta.GetaError, match="pass dense="):
        report(small, wider)


def test_fused_qkv_weight_is_found_behind_chunks() -> None:
    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    model, x = SelfAttention().eval(), (torch.randn(2, 5, 16),)
    in_proj = model.attn.in_proj_weight
    plan = geta.prepare(model, x, geta.Config(weight_bits=(2, 8)))
    for b in plan.bindings:
        b.quantizer.set_bits(5 if b.tensor is in_proj else 7)
    heads = next(g for g in plan.groups if g.prunable)  # 4 heads of 4 channels
    heads.zero_(torch.tensor([0]))  # one head less: PrunedMultiheadAttention chunks q/k/v apart
    small = geta.convert(model, plan)
    projections = [layer for layer in report(small, x).layers if layer.kind == "linear"][:3]
    assert [layer.weighted for layer in projections] == [True, True, True]
    assert [layer.weight_bits for layer in projections] == [5, 5, 5]  # the in_proj quantizer's bits
    assert sum(layer.params for layer in projections) == 3 * 12 * 16 + 3 * 12  # weight and bias, once
