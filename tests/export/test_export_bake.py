"""`geta.export.baked`: a plain eval-mode module with the converted model's function.

Invariants: for weight-only quantization the baked model computes what the converted model
computes (relative 1e-5); nothing of geta is left in it (no parametrization, no quantizer
module, no pre-hook, no geta op in its exported graph); activation quantizers are removed;
BatchNorm folding is exact in eval mode and only folds a convolution whose output feeds the
BatchNorm alone; the source model is untouched.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import geta
from geta.export import ExportError, baked
from geta.quant import input_quantizer, weight_quantizers
from geta.quant.quantizer import LearnableQuantizer
from geta.testing import max_relative_error, model_outputs, zero_random_groups, zoo

CASES = ["resnet", "mobilenet", "conv1d", "mha", "transformer_post_ln", "hf_bert"]


def _converted(name: str, *, acts: bool, act_bits: int = 4) -> tuple[nn.Module, object]:
    """Prepared (weights at 4 bits, inputs at ``act_bits``), half the units zeroed, converted."""
    if name.startswith("hf_"):
        pytest.importorskip("transformers")
    model, x = zoo.build(name)
    _random_batchnorm_statistics(model)
    plan = geta.prepare(model, x, geta.Config(weight_bits=(2, 16), act_bits=(2, 16) if acts else None))
    zero_random_groups(plan, 0.5, seed=0)
    with torch.no_grad():
        for q in plan.quantizers.values():
            q.set_bits(act_bits if q in {input_quantizer(m) for m in model.modules()} else 4)
    return geta.convert(model, plan), x


def _random_batchnorm_statistics(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine terms, so that folding has something to get wrong."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.1)
                m.weight.copy_(torch.randn(n, generator=gen))
                m.bias.copy_(torch.randn(n, generator=gen))


def _geta_ops(model: nn.Module, x: object) -> set[str]:
    args, kwargs = (x, {}) if isinstance(x, tuple) else ((), x)
    graph = torch.export.export(model, args, kwargs=kwargs, strict=False).graph  # type: ignore[arg-type]
    return {str(n.target) for n in graph.nodes if n.op == "call_function" and "geta" in str(n.target)}


def _assert_plain(model: nn.Module, x: object) -> None:
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert not any(isinstance(m, LearnableQuantizer) for m in model.modules())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert not any(m.training for m in model.modules())
    assert _geta_ops(model, x) == set()


@pytest.mark.parametrize("name", CASES)
def test_baked_weights_only_model_computes_what_the_converted_model_computes(name: str) -> None:
    small, x = _converted(name, acts=False)
    before = model_outputs(small, x)
    fast = baked(small)
    assert max_relative_error(model_outputs(fast, x), before) <= 1e-5
    _assert_plain(fast, x)
    assert any(weight_quantizers(m) for m in small.modules())  # the source keeps its quantizers
    assert max_relative_error(model_outputs(small, x), before) == 0.0


@pytest.mark.parametrize("name", ["resnet", "mobilenet", "conv1d", "conv3d", "vgg"])
def test_batchnorm_folding_is_exact_in_eval_mode(name: str) -> None:
    small, x = _converted(name, acts=False)
    unfolded = baked(small)
    folded = baked(small, x, fold_batchnorm=True)
    assert max_relative_error(model_outputs(folded, x), model_outputs(unfolded, x)) <= 1e-5
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    assert any(isinstance(m, norms) for m in unfolded.modules())
    assert not any(isinstance(m, norms) for m in folded.modules())  # every BN follows a conv here
    _assert_plain(folded, x)


class _SharedConvOutput(nn.Module):
    """conv -> BN, and the conv's output also feeds the residual add: BN must not be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)  # (B, 4, H, W), read twice
        return self.bn2(self.conv2(self.bn(h) + h))


def test_only_a_convolution_read_by_its_batchnorm_alone_is_folded() -> None:
    model = _SharedConvOutput()
    _random_batchnorm_statistics(model)
    x = (torch.randn(2, 4, 6, 6),)
    folded = baked(model, x, fold_batchnorm=True)
    assert isinstance(folded.bn, nn.BatchNorm2d) and isinstance(folded.bn2, nn.Identity)
    assert max_relative_error(model_outputs(folded, x), model_outputs(model.eval(), x)) <= 1e-5
    assert isinstance(model.bn2, nn.BatchNorm2d)  # the source model is untouched


@pytest.mark.parametrize("name", ["resnet", "mha", "hf_llama"])
def test_activation_quantizers_are_removed(name: str) -> None:
    """Baked W+A model == the same model quantized on weights only (layer inputs and, where
    geta quantizes them, attention's products run in float)."""
    weights_only, x = _converted(name, acts=False)
    both, _ = _converted(name, acts=True, act_bits=3)  # 3-bit inputs: far from float
    fast = baked(both)
    _assert_plain(fast, x)
    assert max_relative_error(model_outputs(fast, x), model_outputs(weights_only, x)) <= 1e-5
    assert max_relative_error(model_outputs(fast, x), model_outputs(both, x)) > 1e-3
    assert any(input_quantizer(m) for m in both.modules())  # the source keeps its quantizers


@pytest.mark.parametrize("name", ["mlp", "hf_bert"])
def test_int8_linear_holds_geta_codes_and_approximates_the_float_model(name: str) -> None:
    pytest.importorskip("torch.ao.nn.quantized.dynamic")
    if name.startswith("hf_"):
        pytest.importorskip("transformers")
    model, x = zoo.build(name)
    plan = geta.prepare(model, x, geta.Config(weight_bits=(8, 8)))
    with torch.no_grad():
        for q in plan.quantizers.values():
            q.set_bits(8)
    fast = baked(model, int8_linear=True)
    int8 = [m for m in fast.modules() if type(m).__name__ == "Linear" and hasattr(m, "_packed_params")]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and weight_quantizers(m)]
    assert len(int8) == len(linears) > 0
    layer, source = int8[0], linears[0]
    q = weight_quantizers(source)["weight"]
    assert torch.equal(layer.weight().int_repr().float() * float(q.step), source.weight.detach())
    assert not any(isinstance(m, LearnableQuantizer) for m in fast.modules())
    err = max_relative_error(model_outputs(fast, x), model_outputs(baked(model), x))
    assert 0 < err <= 0.1  # torch quantizes the inputs on the fly: close, not equal


def test_folding_needs_example_inputs() -> None:
    model, _ = zoo.build("resnet")
    with pytest.raises(ExportError, match="example_inputs"):
        baked(model, fold_batchnorm=True)
