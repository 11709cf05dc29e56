"""The chunked straight-through backward (geta.quant.ste): same gradients, no full-size scratch.

A tensor larger than ``CHUNK_ELEMENTS`` is processed by pieces; the chunk size is made small
here so that small tensors take many pieces (the last one partial). The reference is the slow
obvious one: the §1.3 formulas written out of place over the whole tensor in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from geta.config import STE
from geta.quant import functional as F
from geta.quant import ste as ste_module

SHAPE = (37, 53)  # 1961 elements: 7 pieces of 300, the last one of 161


def reference(x: Tensor, g: Tensor, scalars: list[Tensor], signed: bool, ste: STE) -> list[Tensor]:
    """[dL/dx, dL/dd, dL/dq_m, dL/dt] straight from docs/method.md §1.3, sums in float64."""
    d, q, t = (v.double() for v in scalars)
    xd, gd = x.double(), g.double()
    s = torch.sign(xd) if signed else (xd > 0).double()
    m = torch.minimum(xd.abs() if signed else xd.clamp_min(0.0), q)
    u = m**t
    bound = q if ste is STE.CLIPPED else torch.tensor(F.STE_FIXED_BOUND, dtype=torch.float64)
    passband = (xd.abs() <= bound) & ((xd >= 0) | signed)
    clipped = (xd.abs() > q) if signed else (xd > q)
    r = torch.round((u.float() / d.float()).double())  # the grid index, rounded as the op does
    return [
        torch.where(passband, g, torch.zeros_like(g)),
        (gd * s * (r - u / d)).sum(),
        (gd * s * clipped).sum() * t * q ** (t - 1),
        (gd * s * u * torch.log(m.clamp_min(F.LN_EPS))).sum(),
    ]


def grads(x: Tensor, g: Tensor, scalars: list[Tensor], signed: bool, ste: STE) -> list[Tensor]:
    leaves = [v.detach().clone().requires_grad_(True) for v in [x, *scalars]]
    F.fake_quant(*leaves, signed=signed, ste=ste).backward(g)
    return [leaf.grad for leaf in leaves]  # type: ignore[misc]


def data(seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x, g = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    x.view(-1)[::17] = 0.0
    return x, g


@pytest.mark.parametrize("t", [1.0, 0.8])
@pytest.mark.parametrize("ste", list(STE))
@pytest.mark.parametrize("signed", [True, False])
def test_chunked_backward_matches_the_slow_reference(
    signed: bool, ste: STE, t: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, g = data()
    sc = [torch.tensor(v) for v in (2 / 15, 1.5, t)]
    whole = grads(x, g, sc, signed, ste)
    monkeypatch.setattr(ste_module, "CHUNK_ELEMENTS", 300)
    chunked = grads(x, g, sc, signed, ste)
    want = reference(x, g, sc, signed, ste)
    assert torch.equal(chunked[0], want[0]) and torch.equal(whole[0], want[0])  # elementwise: exact
    assert chunked[0].is_contiguous()
    for got, ref in zip(chunked[1:], want[1:]):  # sums: float rounding only
        assert got.dtype == torch.float32 and got.shape == ()
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(chunked[1:], whole[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_chunks_skip_unrequested_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    x, g = data(1)
    sc = [torch.tensor(v) for v in (0.1, 1.0, 1.0)]
    monkeypatch.setattr(ste_module, "CHUNK_ELEMENTS", 300)
    leaves = [
        x.clone(),
        sc[0].clone().requires_grad_(True),
        sc[1].clone(),
        sc[2].clone().requires_grad_(True),
    ]
    F.fake_quant(*leaves).backward(g)
    assert leaves[0].grad is None and leaves[2].grad is None
    assert leaves[1].grad is not None and leaves[3].grad is not None


class _Sizes(TorchDispatchMode):
    """Records the element count of every new storage an op returns (views are not new)."""

    def __init__(self) -> None:
        super().__init__()
        self.numels: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        seen = {
            a.untyped_storage().data_ptr() for a in [*args, *(kwargs or {}).values()] if isinstance(a, Tensor)
        }
        for o in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(o, Tensor) and o.untyped_storage().data_ptr() not in seen:
                self.numels.append(o.untyped_storage().nbytes() // o.element_size())
        return out


@pytest.mark.parametrize("signed", [True, False])
def test_backward_allocates_one_full_size_tensor(signed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Of a large contiguous tensor, the backward's only full-size tensor is dL/dx itself."""
    x, g = data(2)
    sc = [torch.tensor(v).requires_grad_(True) for v in (0.1, 1.2, 0.9)]
    monkeypatch.setattr(ste_module, "CHUNK_ELEMENTS", 300)
    y = F.fake_quant(x.clone().requires_grad_(True), *sc, signed=signed)
    sizes = _Sizes()
    with sizes:
        y.backward(g)
    assert sizes.numels.count(x.numel()) == 1  # dL/dx (the empty output the pieces fill)
    assert max(n for n in sizes.numels if n != x.numel()) <= 300
