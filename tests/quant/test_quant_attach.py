"""Binding quantizers to layers: identity, read-back, copies, pickling, calibration, export."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

from geta.errors import GetaError
from geta.quant.attach import (
    attach_input_quantizer,
    attach_weight_quantizer,
    calibrate_input_ranges,
    init_input_quantizers,
    input_quantizer,
    is_quantized,
    weight_quantizers,
)
from geta.quant.quantizer import LearnableQuantizer


def _forward(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return model(*inputs)


def tiny_model(seed: int = 0) -> nn.Sequential:
    """conv -> relu -> flatten -> linear, weights quantized on both layers, input on the linear."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4))
    for layer in (model[0], model[3]):
        q = LearnableQuantizer(init_bits=4)
        q.init_from(layer.weight)
        attach_weight_quantizer(layer, "weight", q)
    attach_input_quantizer(model[3], LearnableQuantizer(signed=False, init_bits=3))
    ranges = calibrate_input_ranges(model, [model[3]], (torch.randn(2, 2, 4, 4),), _forward)
    init_input_quantizers(ranges)
    return model


def test_weight_attach_keeps_identity_and_quantizes() -> None:
    layer = nn.Linear(5, 3)
    w = layer.weight
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)  # built before attaching
    q = LearnableQuantizer(init_bits=3)
    q.init_from(w)
    returned = attach_weight_quantizer(layer, "weight", q)
    assert returned is w and layer.parametrizations["weight"].original is w
    assert torch.equal(layer.weight, q(w)) and not torch.equal(layer.weight, w)
    assert len(torch.unique(layer.weight)) <= 7  # 3 signed bits: codes -3..3
    before = w.detach().clone()
    layer(torch.randn(4, 5)).pow(2).sum().backward()
    assert w.grad is not None and all(p.grad is not None for p in q.parameters())
    opt.step()
    assert not torch.equal(w.detach(), before)  # the optimizer still updates the same object
    assert weight_quantizers(layer) == {"weight": q} and is_quantized(layer)
    assert input_quantizer(layer) is None


def test_weight_attach_errors() -> None:
    layer = nn.Linear(2, 2)
    with pytest.raises(GetaError, match="no parameter named 'weights'"):
        attach_weight_quantizer(layer, "weights", LearnableQuantizer())
    attach_weight_quantizer(layer, "weight", LearnableQuantizer())
    with pytest.raises(GetaError, match="already parametrized"):
        attach_weight_quantizer(layer, "weight", LearnableQuantizer())


def test_input_quantizer_hook() -> None:
    layer = nn.Linear(4, 2)
    q = LearnableQuantizer(init_bits=2, qmax=0.5)
    attach_input_quantizer(layer, q)
    x = torch.randn(3, 4)
    assert torch.equal(layer(x), nn.functional.linear(q(x), layer.weight, layer.bias))
    assert input_quantizer(layer) is q and layer.geta_input_quantizer is q
    assert weight_quantizers(layer) == {} and is_quantized(layer)
    with pytest.raises(GetaError, match="already has an input quantizer"):
        attach_input_quantizer(layer, LearnableQuantizer())


def test_input_quantizer_quantizes_a_repeated_input_once() -> None:
    attn = nn.MultiheadAttention(8, 2, batch_first=True)
    q = LearnableQuantizer(init_bits=3, qmax=1.0)
    attach_input_quantizer(attn, q)
    seen: list[tuple[torch.Tensor, ...]] = []
    attn.register_forward_pre_hook(lambda m, args: seen.append(args))  # runs after geta's hook
    x, other = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    attn(x, x, x)  # self-attention: query, key and value are one quantized tensor
    assert seen[0][0] is seen[0][1] is seen[0][2] and torch.equal(seen[0][0], q(x))
    attn(x, other, other)  # key/value are another tensor: passed as they are
    assert torch.equal(seen[1][0], q(x)) and seen[1][1] is other and seen[1][2] is other


def test_read_back_ignores_foreign_modules() -> None:
    plain = nn.Linear(2, 2)
    assert not is_quantized(plain) and input_quantizer(plain) is None
    plain.geta_input_quantizer = nn.Identity()  # same attribute name, not a quantizer
    assert input_quantizer(plain) is None
    nn.utils.parametrize.register_parametrization(plain, "weight", nn.Identity())
    assert weight_quantizers(plain) == {} and not is_quantized(plain)


def test_deepcopy_is_independent_and_equal() -> None:
    model = tiny_model()
    x = torch.randn(2, 2, 4, 4)
    clone = copy.deepcopy(model)
    assert torch.equal(clone(x), model(x))
    assert weight_quantizers(clone[3])["weight"] is not weight_quantizers(model[3])["weight"]
    assert clone[3].parametrizations["weight"].original is not model[3].parametrizations["weight"].original
    clone[3].geta_input_quantizer.set_bits(2)
    assert not torch.equal(clone(x), model(x))  # the copy's hook uses the copy's quantizer


@pytest.mark.parametrize("via", ["torch.save", "pickle"])
def test_whole_model_pickle_round_trip(via: str) -> None:
    model = tiny_model()
    x = torch.randn(2, 2, 4, 4)
    if via == "torch.save":
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
    else:
        loaded = pickle.loads(pickle.dumps(model))
    assert torch.equal(loaded(x), model(x))
    assert list(loaded.state_dict()) == list(model.state_dict())
    assert [n for n, _ in loaded.named_parameters()] == [n for n, _ in model.named_parameters()]
    for layer in (loaded[0], loaded[3]):
        ((name, q),) = weight_quantizers(layer).items()
        assert layer.parametrizations[name][0] is q
        assert torch.equal(getattr(layer, name), q(layer.parametrizations[name].original))
    iq = input_quantizer(loaded[3])
    assert iq is not None and not iq.signed
    iq.set_bits(2)
    assert not torch.equal(loaded(x), model(x))  # the restored hook is live
    assert pickle.loads(pickle.dumps(loaded))[3].parametrizations["weight"].original.shape == (4, 12)


def test_pickle_refuses_foreign_right_inverse() -> None:
    class Scale(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

        def right_inverse(self, x: torch.Tensor) -> torch.Tensor:
            return x / 2

    layer = nn.Linear(2, 2)
    attach_weight_quantizer(layer, "weight", LearnableQuantizer())
    nn.utils.parametrize.register_parametrization(layer, "bias", Scale())
    with pytest.raises(GetaError, match="right_inverse"):
        pickle.dumps(layer)


def test_state_dict_loads_into_fresh_model() -> None:
    trained, fresh = tiny_model(seed=0), tiny_model(seed=1)
    x = torch.randn(2, 2, 4, 4)
    assert not torch.equal(trained(x), fresh(x))
    fresh.load_state_dict(trained.state_dict())
    assert torch.equal(trained(x), fresh(x))


def test_calibration_sees_float_input_and_cleans_up() -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2), nn.Linear(2, 2))
    iq = LearnableQuantizer(init_bits=2, qmax=0.01)  # would crush the input to at most 0.01
    attach_input_quantizer(model[2], iq)
    batches = [torch.randn(4, 3), 3 * torch.randn(4, 3)]
    seen = [model[1](model[0](b)).abs().max().item() for b in batches]

    def run(m: nn.Module, xs: list[torch.Tensor]) -> None:
        for b in xs:
            m(b)

    ranges = calibrate_input_ranges(model, [model[0], model[2]], batches, run)
    assert set(ranges) == {model[0], model[2]}
    assert ranges[model[0]] == max(b.abs().max().item() for b in batches)
    assert ranges[model[2]] == pytest.approx(max(seen), rel=1e-6)
    assert ranges[model[2]] > 0.01
    assert ranges == calibrate_input_ranges(model, [model[0], model[2]], batches, run)  # hooks removed
    init_input_quantizers(ranges)  # model[0] has no input quantizer: skipped
    assert float(iq.qmax.detach()) == pytest.approx(max(seen), rel=1e-6)
    assert iq.bit_width == pytest.approx(2.0)

    def failing(m: nn.Module, xs: object) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        calibrate_input_ranges(model, [model[3]], batches, failing)
    assert calibrate_input_ranges(model, [model[3]], batches[:1], lambda m, xs: None) == {}


def test_export_one_node_per_quantizer() -> None:
    model = tiny_model()
    ep = torch.export.export(model, (torch.randn(2, 2, 4, 4),), strict=False)
    quant = [n for n in ep.graph.nodes if n.target is torch.ops.geta.fake_quant.default]
    assert len(quant) == 3
    assert sorted(n.args[4] for n in quant) == [False, True, True]  # the input one is unsigned


def test_meta_device_model() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    attach_weight_quantizer(model[0], "weight", LearnableQuantizer())
    attach_input_quantizer(model[2], LearnableQuantizer(signed=False))
    assert weight_quantizers(model[0])["weight"].step.device.type == "meta"
    y = model(torch.empty(2, 8, device="meta"))
    assert y.device.type == "meta" and y.shape == (2, 4)


def test_doctests() -> None:
    import doctest

    import geta.quant.attach as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
