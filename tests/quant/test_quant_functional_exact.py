"""The fake-quant op is bit for bit its plain formulas (docs/method.md §1.1, §1.3), fast paths included.

`plain` writes the forward and the four straight-through gradients out of place, one formula a
line. The op computes them in place, skips ``pow`` when the exponent is exactly 1 and skips the
gradients nobody asked for; none of that may change a single bit, signed zeros and the order of
the scalar sums (which follows the memory layout) included.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from geta.config import STE
from geta.quant import functional as F

SHAPE = (8, 6, 7, 7)
AS_INT = {torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16}


def plain(
    x: Tensor, g: Tensor, step: Tensor, qmax: Tensor, exponent: Tensor, signed: bool, ste: STE
) -> list[Tensor]:
    """[Q(x), dL/dx, dL/dd, dL/dq_m, dL/dt] for g = dL/dQ, straight from the formulas."""
    dt = torch.promote_types(x.dtype, torch.float32)
    d, q, t = step.to(dt).clamp_min(F.MIN_STEP), qmax.to(dt).clamp_min(F.MIN_QMAX), exponent.to(dt)
    xc = x.to(dt)
    s = torch.sign(xc) if signed else (xc > 0).to(dt)
    m = torch.minimum(xc.abs() if signed else xc.clamp_min(0.0), q)
    u = m**t
    v = u / d
    r = torch.round(v)
    gs = g.to(dt) * s
    bound = q if ste is STE.CLIPPED else torch.full_like(q, F.STE_FIXED_BOUND)
    passband = (xc.abs() <= bound) if signed else (xc.abs() <= bound) & (xc >= 0)
    clipped = (xc.abs() > q) if signed else (xc > q)
    return [
        (s * d * r).to(x.dtype),
        torch.where(passband, g, torch.zeros_like(g)),
        (gs * (r - v)).sum().to(step.dtype),
        (torch.where(clipped, gs, torch.zeros_like(gs)).sum() * t * q ** (t - 1)).to(qmax.dtype),
        (gs * u * torch.log(m.clamp_min(F.LN_EPS))).sum().to(exponent.dtype),
    ]


def op(
    x: Tensor, g: Tensor, scalars: list[Tensor], signed: bool, ste: STE, wants: tuple[bool, ...]
) -> list[Tensor | None]:
    """[Q(x), and the gradient of each of x, step, qmax, exponent (None where not wanted)]."""
    leaves = [v.detach().clone().requires_grad_(w) for v, w in zip([x, *scalars], wants)]
    y = F.fake_quant(*leaves, signed=signed, ste=ste)
    y.backward(g)
    return [y.detach(), *(leaf.grad for leaf in leaves)]


def same_bits(a: Tensor, b: Tensor) -> bool:
    """Equal bit for bit (any NaN equals any NaN), dtype and shape included."""
    if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a.isnan(), b.isnan()):
        return False
    keep = ~a.isnan()
    return torch.equal(a.contiguous().view(AS_INT[a.dtype])[keep], b.contiguous().view(AS_INT[b.dtype])[keep])


def data(dtype: torch.dtype, layout: str, special: bool = False) -> tuple[Tensor, Tensor]:
    """x with +-0 and values beyond qmax, in a given layout; ``special``: inf/NaN in x and g.

    Without ``special`` the scalar gradients are finite, so their bits test the summation order.
    """
    gen = torch.Generator().manual_seed(0)
    x, g = torch.randn(SHAPE, generator=gen) * 0.8, torch.randn(SHAPE, generator=gen)
    flat = x.view(-1)
    flat[:200], flat[200:400] = 0.0, -0.0
    flat[400:700] *= 5.0
    if special:
        flat[-4:] = torch.tensor([float("inf"), float("-inf"), float("nan"), 1e-30])
        g.view(-1)[-8:-6] = torch.tensor([float("inf"), 0.0])
    idx = torch.randperm(flat.numel(), generator=gen)
    x, g = flat[idx].view(SHAPE).to(dtype), g.view(-1)[idx].view(SHAPE).to(dtype)
    if layout == "x channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "g channels_last":
        g = g.contiguous(memory_format=torch.channels_last)
    elif layout == "g expanded":
        g = g[:1, :1, :1, :1].expand(SHAPE)
    return x, g


def scalars(t: float, dtype: torch.dtype) -> list[Tensor]:
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    return [torch.tensor(v, dtype=sdt) for v in (2 / 127, 1.0, t)]


@pytest.mark.parametrize("special", [False, True], ids=["finite", "inf-nan"])
@pytest.mark.parametrize("layout", ["contiguous", "x channels_last", "g channels_last", "g expanded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("t", [1.0, 1.3])
@pytest.mark.parametrize("ste", list(STE))
@pytest.mark.parametrize("signed", [True, False])
def test_op_is_its_formulas_bit_for_bit(
    signed: bool, ste: STE, t: float, dtype: torch.dtype, layout: str, special: bool
) -> None:
    x, g = data(dtype, layout, special)
    sc = scalars(t, dtype)
    got, want = op(x, g, sc, signed, ste, (True,) * 4), plain(x, g, *sc, signed, ste)
    assert special or all(bool(v.isfinite()) for v in want[2:])
    assert [same_bits(a, b) for a, b in zip(got, want)] == [True] * 5  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "wants", [(True, True, True, False), (True, False, False, False), (False, True, True, True)]
)
@pytest.mark.parametrize("t", [1.0, 0.7])
@pytest.mark.parametrize("signed", [True, False])
def test_unrequested_gradients_are_skipped_not_changed(
    signed: bool, t: float, wants: tuple[bool, ...]
) -> None:
    x, g = data(torch.float32, "contiguous")
    sc = scalars(t, torch.float32)
    got, want = op(x, g, sc, signed, STE.CLIPPED, wants), plain(x, g, *sc, signed, STE.CLIPPED)
    assert same_bits(got[0], want[0])
    for grad, ref, wanted in zip(got[1:], want[1:], wants):
        assert (grad is None) if not wanted else same_bits(grad, ref)


@pytest.mark.parametrize("signed", [True, False])
def test_exponent_one_fast_path_equals_general_path(signed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    x, g = data(torch.float32, "x channels_last")
    sc = scalars(1.0, torch.float32)
    fast = op(x, g, sc, signed, STE.CLIPPED, (True,) * 4)
    codes = F.integer_codes(x, *sc, signed=signed)
    monkeypatch.setattr(F, "_exactly_one", lambda t: False)  # as on an accelerator or when tracing
    general = op(x, g, sc, signed, STE.CLIPPED, (True,) * 4)
    assert [same_bits(a, b) for a, b in zip(fast, general)] == [True] * 5  # type: ignore[arg-type]
    assert torch.equal(codes, F.integer_codes(x, *sc, signed=signed))
