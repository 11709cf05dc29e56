"""geta.quant.functional against slow, obvious float64 references (docs/method.md §1)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geta.config import STE
from geta.quant import functional as F

SIGNS = [True, False]


# --- slow references: plain Python floats, one element at a time ----------------------------


def ref_forward(xs: list[float], d: float, q: float, t: float, signed: bool) -> list[float]:
    out = []
    for x in xs:
        if not signed:
            x = min(max(x, 0.0), q)
        s = math.copysign(1.0, x) if x != 0 else 0.0
        u = min(abs(x), q) ** t
        out.append(s * d * round(u / d))  # Python round: half to even, like torch.round
    return out


def ref_grad_x(xs: list[float], gs: list[float], q: float, signed: bool, ste: STE) -> list[float]:
    bound = q if ste is STE.CLIPPED else 2.0
    return [g if abs(x) <= bound and (signed or x >= 0) else 0.0 for x, g in zip(xs, gs)]


def ste_reference(
    x: torch.Tensor, d: torch.Tensor, q: torch.Tensor, t: torch.Tensor, signed: bool
) -> torch.Tensor:
    """Q(x) in plain autograd ops, rounding straight through (d round(v)/dv := 1, §1.3).

    Independent of geta's custom op and its hand-written backward: autograd differentiates this.
    """
    if not signed:
        x = x.clamp(min=0.0)
    s = torch.sign(x)
    v = torch.minimum(x.abs(), q) ** t / d
    rounded = v + (torch.round(v) - v).detach()  # round in the forward, identity in the backward
    return s * d * rounded


def surrogate(
    x: torch.Tensor, g: torch.Tensor, q: torch.Tensor, t: torch.Tensor, signed: bool
) -> torch.Tensor:
    """sum g * sign(x) * min(|x|, q)**t: the STE treats Q as this in q_m and t (round -> id)."""
    if not signed:
        x = x.clamp_min(0.0)
    return (g * torch.sign(x) * torch.minimum(x.abs(), q) ** t).sum()


def _data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen, dtype=torch.float64) * 1.3
    g = torch.randn(n, generator=gen, dtype=torch.float64)
    return x, g


def _scalars(d: float = 0.07, q: float = 0.9, t: float = 1.2) -> list[torch.Tensor]:
    return [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (d, q, t)]


def _run(x: torch.Tensor, g: torch.Tensor, signed: bool, ste: STE = STE.CLIPPED, **kw: float):
    x = x.clone().requires_grad_(True)
    d, q, t = _scalars(**kw)
    y = F.fake_quant(x, d, q, t, signed=signed, ste=ste)
    (y * g).sum().backward()
    return y.detach(), x.grad, d.grad, q.grad, t.grad


# --- forward ---------------------------------------------------------------------------------


@pytest.mark.parametrize("signed", SIGNS)
@pytest.mark.parametrize("t", [1.0, 0.7, 1.6])
def test_forward_matches_reference(signed: bool, t: float) -> None:
    x, _ = _data()
    y = F.fake_quant(x, *(torch.tensor(v, dtype=torch.float64) for v in (0.05, 0.8, t)), signed=signed)
    expected = torch.tensor(ref_forward(x.tolist(), 0.05, 0.8, t, signed), dtype=torch.float64)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    if not signed:
        assert bool((y >= 0).all())


@pytest.mark.parametrize("signed", SIGNS)
@pytest.mark.parametrize("b", [2, 3, 4, 8])
def test_outputs_on_grid_with_codes_in_range(signed: bool, b: int) -> None:
    x, _ = _data(256, seed=1)
    x = x.float()
    q, t = torch.tensor(0.75), torch.tensor(1.3)
    d = F.step_for_bits(b, q, t, signed=signed)
    y = F.fake_quant(x, d, q, t, signed=signed)
    k = F.integer_codes(x, d, q, t, signed=signed)
    assert k.dtype == torch.int32
    lo, hi = F.code_range(b, signed)
    assert int(k.min()) >= lo and int(k.max()) <= hi
    assert torch.equal(y, k.float() * d)  # exactly on the grid {k * step}
    assert len(torch.unique(y)) <= hi - lo + 1


def test_half_to_even_and_zero() -> None:
    d, q, t = torch.tensor(1.0), torch.tensor(10.0), torch.tensor(1.0)
    y = F.fake_quant(torch.tensor([0.5, 1.5, 2.5, -2.5, 0.0]), d, q, t)
    assert y.tolist() == [0.0, 2.0, 2.0, -2.0, 0.0]


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_degenerate_step_and_qmax_stay_finite(bad: float) -> None:
    x, _ = _data(16)
    one = torch.tensor(1.0, dtype=torch.float64)
    for d, q in [
        (torch.tensor(bad, dtype=torch.float64), one),
        (one / 8, torch.tensor(bad, dtype=torch.float64)),
    ]:
        d.requires_grad_(True)
        y = F.fake_quant(x, d, q, torch.tensor(1.5, dtype=torch.float64))
        y.sum().backward()
        assert bool(torch.isfinite(y).all()) and bool(torch.isfinite(d.grad))


# --- backward: each STE gradient of §1.3 -----------------------------------------------------


@pytest.mark.parametrize("signed", SIGNS)
@pytest.mark.parametrize("ste", list(STE))
def test_grad_x_is_masked_straight_through(signed: bool, ste: STE) -> None:
    x, g = _data()
    _, gx, *_ = _run(x, g, signed, ste)
    expected = torch.tensor(ref_grad_x(x.tolist(), g.tolist(), 0.9, signed, ste), dtype=torch.float64)
    assert torch.equal(gx, expected)
    if ste is STE.FIXED:  # passes beyond qmax (0.9) up to 2
        assert bool((gx[(x.abs() > 0.9) & (x.abs() <= 2) & (x >= 0)] != 0).all())


@pytest.mark.parametrize("signed", SIGNS)
@pytest.mark.parametrize("t", [1.0, 1.2])
def test_grad_step_matches_autograd_through_a_reference(signed: bool, t: float) -> None:
    x, g = _data()
    y, _, gd, _, _ = _run(x, g, signed, t=t)
    d = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
    q0, t0 = torch.tensor(0.9, dtype=torch.float64), torch.tensor(t, dtype=torch.float64)
    reference = ste_reference(x, d, q0, t0, signed)
    torch.testing.assert_close(y, reference.detach(), rtol=0, atol=1e-12)  # the same function ...
    (expected,) = torch.autograd.grad((reference * g).sum(), d)
    assert gd.dtype == torch.float64 and gd.dim() == 0
    torch.testing.assert_close(gd, expected, rtol=1e-10, atol=1e-12)  # ... and the same dL/dstep
    assert float(gd) != 0.0


@pytest.mark.parametrize("signed", SIGNS)
@pytest.mark.parametrize("t", [1.0, 1.2, 0.8])
def test_grad_qmax_and_exponent_match_surrogate(signed: bool, t: float) -> None:
    x, g = _data()
    x = x[(x.abs() - 0.9).abs() > 1e-3]  # keep away from the kink |x| = q_m for the differences
    g = g[: len(x)]
    _, _, _, gq, gt = _run(x, g, signed, t=t)
    q0, t0, h = torch.tensor(0.9, dtype=torch.float64), torch.tensor(t, dtype=torch.float64), 1e-6
    fd_q = (surrogate(x, g, q0 + h, t0, signed) - surrogate(x, g, q0 - h, t0, signed)) / (2 * h)
    fd_t = (surrogate(x, g, q0, t0 + h, signed) - surrogate(x, g, q0, t0 - h, signed)) / (2 * h)
    torch.testing.assert_close(gq, fd_q, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(gt, fd_t, rtol=1e-6, atol=1e-8)
    # and exactly the autograd derivative of the surrogate
    qa, ta = q0.clone().requires_grad_(True), t0.clone().requires_grad_(True)
    aq, at = torch.autograd.grad(surrogate(x, g, qa, ta, signed), (qa, ta))
    torch.testing.assert_close(gq, aq, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gt, at, rtol=1e-12, atol=1e-12)
    assert float(gq) != 0.0  # some inputs are clipped, so q_m gets a gradient


def test_grad_qmax_zero_when_nothing_clipped() -> None:
    x, g = _data()
    _, _, _, gq, _ = _run(x * 0.1, g, True, q=10.0)
    assert float(gq) == 0.0


def test_grad_exponent_guarded_at_zero_input() -> None:
    x = torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)
    _, gx, gd, gq, gt = _run(x, torch.ones(3, dtype=torch.float64), True)
    assert all(bool(torch.isfinite(v).all()) for v in (gx, gd, gq, gt))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes_preserved(dtype: torch.dtype) -> None:
    x, g = _data(32)
    xd = x.to(dtype).requires_grad_(True)
    d, q, t = (torch.tensor(v, requires_grad=True) for v in (0.1, 0.9, 1.0))  # float32 scalars
    y = F.fake_quant(xd, d, q, t)
    assert y.dtype == dtype
    (y.float() * g.float()).sum().backward()
    assert xd.grad.dtype == dtype and d.grad.dtype == torch.float32
    expected = F.fake_quant(xd.detach().double(), *(v.detach().double() for v in (d, q, t)))
    torch.testing.assert_close(y.double(), expected, rtol=1e-2, atol=1e-2)


def test_meta_device_forward_and_backward() -> None:
    x = torch.empty(3, 5, device="meta", requires_grad=True)
    d, q, t = (torch.empty((), device="meta", requires_grad=True) for _ in range(3))
    y = F.fake_quant(x, d, q, t, signed=False, ste=STE.FIXED)
    assert y.device.type == "meta" and y.shape == (3, 5)
    y.sum().backward()
    assert x.grad.shape == (3, 5) and d.grad.shape == ()


def test_export_captures_one_node() -> None:
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.d, self.q, self.t = (torch.nn.Parameter(torch.tensor(v)) for v in (0.1, 1.0, 1.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.fake_quant(x, self.d, self.q, self.t, signed=False, ste=STE.FIXED) + 1

    ep = torch.export.export(Tiny(), (torch.randn(2, 3),), strict=False)
    calls = [n for n in ep.graph.nodes if n.op == "call_function"]
    quant = [n for n in calls if n.target is torch.ops.geta.fake_quant.default]
    assert len(quant) == 1 and len(calls) == 2
    assert quant[0].args[4:] == (False, "fixed")
    assert quant[0].meta["val"].shape == (2, 3)


# --- bit algebra -----------------------------------------------------------------------------

positive = st.floats(1e-3, 1e3)
exponents = st.floats(0.5, 2.0)


@settings(max_examples=60, deadline=None)
@given(qmax=positive, t=exponents, b=st.floats(2.0, 16.0), signed=st.booleans())
def test_bits_inverts_step_for_bits(qmax: float, t: float, b: float, signed: bool) -> None:
    q, te = torch.tensor(qmax, dtype=torch.float64), torch.tensor(t, dtype=torch.float64)
    d = F.step_for_bits(b, q, te, signed=signed)
    assert math.isclose(float(F.bits(d, q, te, signed=signed)), b, rel_tol=1e-9)
    # a signed grid carries one more (sign) bit than the unsigned grid of the same step
    diff = F.bits(d, q, te, signed=True) - F.bits(d, q, te, signed=False)
    assert math.isclose(float(diff), 1.0, rel_tol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    qmax=positive,
    t=exponents,
    lo=st.integers(2, 16),
    width=st.integers(0, 6),
    log_step=st.floats(-25.0, 15.0),
    signed=st.booleans(),
)
def test_project_step_lands_in_bit_interval(
    qmax: float, t: float, lo: int, width: int, log_step: float, signed: bool
) -> None:
    hi = min(lo + width, 16)
    q, te = torch.tensor(qmax, dtype=torch.float64), torch.tensor(t, dtype=torch.float64)
    step = torch.tensor(2.0**log_step, dtype=torch.float64)
    p = F.project_step(step, q, te, lo, hi, signed=signed)
    b = float(F.bits(p, q, te, signed=signed))
    assert lo - 1e-9 <= b <= hi + 1e-9
    s_min, s_max = F.step_interval(q, te, lo, hi, signed=signed)
    assert float(s_min) <= float(p) <= float(s_max)
    if float(s_min) <= float(step) <= float(s_max):
        assert float(p) == float(step)  # already feasible: untouched
    assert torch.equal(F.project_step(p, q, te, lo, hi, signed=signed), p)  # idempotent


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(-50.0, 50.0), min_size=1, max_size=40),
    qmax=st.floats(0.01, 20.0),
    t=exponents,
    b=st.integers(2, 12),
    signed=st.booleans(),
)
def test_codes_in_range_and_exact(values: list[float], qmax: float, t: float, b: int, signed: bool) -> None:
    x = torch.tensor(values)
    q, te = torch.tensor(qmax), torch.tensor(t)
    d = F.step_for_bits(b, q, te, signed=signed)
    k = F.integer_codes(x, d, q, te, signed=signed)
    lo, hi = F.code_range(b, signed)
    assert lo <= int(k.min()) and int(k.max()) <= hi
    assert torch.equal(F.fake_quant(x, d, q, te, signed=signed), k.float() * d)


def test_code_range_values_and_errors() -> None:
    assert F.code_range(2) == (-1, 1) and F.code_range(8) == (-127, 127)
    assert F.code_range(1, signed=False) == (0, 1) and F.code_range(8, signed=False) == (0, 255)
    for bad, signed in [(1, True), (0, False), (2.5, True)]:
        with pytest.raises(ValueError, match="bits="):
            F.code_range(bad, signed)  # type: ignore[arg-type]


def test_step_interval_orders_bounds() -> None:
    lo, hi = F.step_interval(torch.tensor(2.0), torch.tensor(1.0), 4, 8)
    assert float(lo) == pytest.approx(2.0 / 127) and float(hi) == pytest.approx(2.0 / 7)
    with pytest.raises(ValueError, match="b_lo"):
        F.step_interval(torch.tensor(2.0), torch.tensor(1.0), 8, 4)


def test_bits_has_gradient_through_scalars() -> None:
    d, q, t = _scalars()
    F.bits(d, q, t).backward()
    # more step -> fewer bits; larger range -> more bits
    assert float(d.grad) < 0 < float(q.grad)


def test_doctests() -> None:
    import doctest

    result = doctest.testmod(F, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0
