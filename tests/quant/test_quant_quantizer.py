"""LearnableQuantizer: initialisation, bit control and gradients (docs/method.md §1.2, §1.4)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geta.config import STE
from geta.errors import ConfigError
from geta.quant.quantizer import LearnableQuantizer


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("init_bits", [16, 8, 3.5])
def test_defaults(signed: bool, init_bits: float) -> None:
    q = LearnableQuantizer(signed=signed, init_bits=init_bits, qmax=2.0)
    assert [n for n, _ in q.named_parameters()] == ["step", "qmax", "exponent"]
    assert all(isinstance(p, torch.nn.Parameter) and p.dim() == 0 for p in q.parameters())
    assert float(q.qmax.detach()) == 2.0 and float(q.exponent.detach()) == 1.0
    assert q.bit_width == pytest.approx(init_bits, abs=1e-4)
    assert q.signed is signed and q.learn_exponent


def test_learn_exponent_false_freezes_t() -> None:
    q = LearnableQuantizer(learn_exponent=False)
    q(torch.randn(10) * 3).sum().backward()
    assert not q.learn_exponent and q.exponent.grad is None
    assert q.step.grad is not None and q.qmax.grad is not None


@pytest.mark.parametrize("kwargs", [{"init_bits": 1}, {"init_bits": 0, "signed": False}, {"qmax": 0.0}])
def test_invalid_arguments(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="LearnableQuantizer"):
        LearnableQuantizer(**kwargs)


@settings(max_examples=30, deadline=None)
@given(b=st.floats(2.0, 16.0), qmax=st.floats(1e-2, 1e2), t=st.floats(0.5, 2.0), signed=st.booleans())
def test_set_bits_round_trips(b: float, qmax: float, t: float, signed: bool) -> None:
    q = LearnableQuantizer(signed=signed, qmax=qmax)
    with torch.no_grad():
        q.exponent.fill_(t)
    q.set_bits(b)
    assert q.bit_width == pytest.approx(b, rel=1e-4)
    assert q.step.is_leaf and q.step.grad_fn is None
    assert q.bits().requires_grad is False


@pytest.mark.parametrize("signed", [True, False])
def test_init_from_weight(signed: bool) -> None:
    w = torch.tensor([[-3.0, 0.5], [1.25, -0.1]])
    q = LearnableQuantizer(signed=signed, init_bits=8)
    with torch.no_grad():
        q.exponent.fill_(1.7)
        q.step.fill_(0.3)
    q.init_from(w)
    assert float(q.qmax.detach()) == (3.0 if signed else 1.25)  # unsigned: max of the non-negative part
    assert float(q.exponent.detach()) == 1.0
    assert q.bit_width == pytest.approx(8.0, abs=1e-4)
    levels = 127 if signed else 255
    assert float(q.step.detach()) == pytest.approx(float(q.qmax.detach()) / levels, rel=1e-6)


@pytest.mark.parametrize("tensor", [torch.zeros(4, 3), torch.empty(0), -torch.ones(3)])
def test_init_from_degenerate_tensor(tensor: torch.Tensor) -> None:
    q = LearnableQuantizer(signed=False)  # -ones: no non-negative part at all
    q.init_from(tensor)
    assert 0.0 < float(q.qmax.detach()) <= 1e-6 and float(q.step.detach()) > 0.0
    y = q(tensor)
    assert bool(torch.isfinite(y).all()) and bool((y == 0).all())


def _slow_fake_quant(xs: list[float], d: float, q: float, t: float, signed: bool) -> list[float]:
    """Q(x) = sign(x) * d * round(min(|x|, q)**t / d), one Python float at a time (docs/method.md §1.1)."""
    out = []
    for x in xs:
        if not signed:
            x = min(max(x, 0.0), q)
        s = math.copysign(1.0, x) if x != 0 else 0.0
        out.append(s * d * round(min(abs(x), q) ** t / d))
    return out


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("ste", list(STE))
def test_forward_matches_a_slow_reference(signed: bool, ste: STE) -> None:
    q = LearnableQuantizer(signed=signed, init_bits=4, qmax=1.5, ste=ste)
    with torch.no_grad():
        q.exponent.fill_(1.25)  # t != 1, so the power law is exercised too
    x = torch.randn(3, 4, dtype=torch.float64) * 2
    d, qm, t = (float(p.detach()) for p in (q.step, q.qmax, q.exponent))
    expected = torch.tensor(_slow_fake_quant(x.flatten().tolist(), d, qm, t, signed), dtype=torch.float64)
    torch.testing.assert_close(q(x).flatten(), expected, rtol=0, atol=1e-6)


def test_sgd_on_clipped_data_grows_qmax() -> None:
    # Every sample lies beyond q_m, so reconstruction loss pulls q_m up (dL/dq_m < 0).
    q = LearnableQuantizer(init_bits=8, qmax=0.5)
    x = torch.linspace(0.6, 1.0, 16)
    opt = torch.optim.SGD([q.qmax], lr=0.01)
    before = float(q.qmax.detach())
    for _ in range(3):
        opt.zero_grad()
        ((q(x) - x) ** 2).mean().backward()
        opt.step()
    assert float(q.qmax.detach()) > before


def test_extra_repr_and_meta() -> None:
    q = LearnableQuantizer(signed=False, init_bits=6)
    assert "bits=6.00" in repr(q) and "signed=False" in repr(q)
    qm = LearnableQuantizer().to("meta")
    assert "bits=?" in repr(qm)
    y = qm(torch.empty(2, 3, device="meta"))
    assert y.device.type == "meta" and y.shape == (2, 3)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("b", [2, 3, 4, 6])
def test_bits_count_the_output_levels(signed: bool, b: int) -> None:
    # b bits mean 2**b - 1 levels (signed, symmetric grid) or 2**b levels (unsigned) over [-q_m, q_m]
    q = LearnableQuantizer(signed=signed, qmax=0.3)
    q.set_bits(b)
    ramp = torch.linspace(-0.3, 0.3, 20_001, dtype=torch.float64)
    levels = len(torch.unique(q(ramp).detach()))
    assert levels == (2**b - 1 if signed else 2**b)
    assert q.bit_width == pytest.approx(b, abs=1e-4) and float(q.bits()) == pytest.approx(b, abs=1e-4)


def test_doctests() -> None:
    import doctest

    import geta.quant.quantizer as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_unit_exponent_follows_every_writer_of_a_fixed_exponent() -> None:
    """`unit_exponent` (the static fact compiled graphs use) is True exactly when t is fixed at 1."""
    fixed, learned = LearnableQuantizer(learn_exponent=False), LearnableQuantizer()
    assert fixed.unit_exponent and not learned.unit_exponent
    state = {**fixed.state_dict(), "exponent": torch.tensor(1.3)}
    fixed.load_state_dict(state)
    assert not fixed.unit_exponent and float(fixed.exponent) == pytest.approx(1.3)
    fixed.init_from(torch.tensor([0.5, -2.0]))  # exponent back to 1
    assert fixed.unit_exponent
    config = {**fixed.to_config(), "exponent": 1.3}
    assert not LearnableQuantizer.from_config(config).unit_exponent
    assert LearnableQuantizer.from_config(fixed.to_config()).unit_exponent
    fixed.exponent.requires_grad_(True)  # learned from now on
    assert not fixed.unit_exponent
