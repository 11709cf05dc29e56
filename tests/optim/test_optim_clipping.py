"""Clipping that follows the bits (`geta.optim.clipping`): the MSE search, the input sampler,
and a budget run whose activations drop to 2 bits without rounding to zero."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import geta
from geta.optim.clipping import INPUT_FRACTIONS, SAMPLE_SIZE, WEIGHT_FRACTIONS, InputSampler, mse_clip
from geta.plan import QuantTarget
from geta.quant.quantizer import LearnableQuantizer


def _naive_quantize(v: float, qmax: float, bits: int, signed: bool) -> float:
    """One value on a uniform grid of ``bits`` over [-qmax, qmax] (unsigned: [0, qmax]), exponent 1."""
    levels = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    step = qmax / levels
    m = min(abs(v), qmax) if signed else min(max(v, 0.0), qmax)
    k = math.floor(m / step + 0.5)  # ties: the values below never sit on a half step exactly
    return math.copysign(k * step, v) if signed else k * step


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("fractions", [WEIGHT_FRACTIONS, INPUT_FRACTIONS], ids=["weight", "input"])
def test_mse_clip_is_the_argmin_of_the_rounding_error(signed: bool, bits: int, fractions: tuple) -> None:
    g = torch.Generator().manual_seed(bits + 10 * signed)
    x = torch.randn(300, generator=g, dtype=torch.float64)
    x[:3] *= 12.0  # a few outliers, as in activations
    q = LearnableQuantizer(signed=signed).double()
    got = float(mse_clip(x, bits, q, fractions))
    peak = float(x.abs().max()) if signed else float(x.clamp_min(0).max())
    errors = []
    for frac in fractions:
        qmax = peak * frac
        errors.append((sum((_naive_quantize(v, qmax, bits, signed) - v) ** 2 for v in x.tolist()), qmax))
    best = min(errors, key=lambda e: e[0])
    assert got == pytest.approx(best[1], rel=1e-9)


def test_sampler_is_deterministic_and_covers_every_channel() -> None:
    q = LearnableQuantizer()
    sampler = InputSampler({0: q})
    x = torch.randn(64, 96, 128)  # (batch, tokens, channels): an even stride would hit one channel
    q(x)
    first = sampler.samples[0].clone()
    assert first.numel() == SAMPLE_SIZE
    q(x)
    assert torch.equal(first, sampler.samples[0])
    positions = torch.nonzero(torch.isin(x.reshape(-1), first)).squeeze(1)
    assert len(set((positions % 128).tolist())) == 128
    small = torch.randn(10, 7)
    q(small)
    assert torch.equal(sampler.samples[0], small.reshape(-1))
    sampler.remove()
    q(x)
    assert sampler.samples == {}


def test_sampler_ignores_a_capture_of_the_model_mid_training() -> None:
    """Converting or reporting mid-training captures the model with torch.export: the sampler's
    hook must neither record fake values nor cache a traced index (it did, and every later
    capture of the model failed on a fake constant, so that epoch had no relative BOPs)."""
    layer = nn.Linear(128, 4)
    q = LearnableQuantizer()
    layer.register_forward_pre_hook(lambda m, args: (q(args[0]),))
    sampler = InputSampler({0: q})
    x = torch.randn(3, 2 * SAMPLE_SIZE // 128, 128)  # a shape the sampler has not seen: a new index
    trained = torch.randn(5, 128)
    layer(trained)
    for _ in range(2):
        torch.export.export(layer, (x,), strict=False)
    assert torch.equal(sampler.samples[0], trained.reshape(-1))  # untouched by the captures
    layer(x)  # a real forward of the captured shape samples as usual
    assert sampler.samples[0].numel() == SAMPLE_SIZE and torch.isin(sampler.samples[0], x).all()


class _Outliers(nn.Module):
    """Two linear layers; the second's input has a few huge values (an LM head's input)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h = h + 20.0 * (h > 2.5).float()  # rare large activations
        return self.b(h)


def test_two_bit_activations_keep_signal_after_the_projection() -> None:
    torch.manual_seed(0)
    model = _Outliers()
    x, y = torch.randn(128, 16), torch.randint(0, 10, (128,))
    config = geta.Config(target_sparsity=0.0, weight_bits=(8, 8), act_bits=(2, 2))
    plan = geta.prepare(model, (x,), config)
    schedule = geta.Schedule(warmup=2, projection=6, joint=2, cooldown=2, projection_periods=3)
    opt = geta.QASSO(plan, 1e-3, schedule=schedule, lr_quant=1e-4)
    for _ in range(schedule.total):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    q = next(b.quantizer for b in plan.bindings if b.target is QuantTarget.INPUT and b.module is model.b)
    assert round(q.bit_width) == 2
    with torch.no_grad():
        h = model.a(x)
        h = h + 20.0 * (h > 2.5).float()
        zero_share = float((q(h) == 0).float().mean())
    assert float(q.qmax) < 0.5 * float(h.abs().max())
    assert zero_share < 0.9  # at q_m = max|h| nearly everything rounds to 0
