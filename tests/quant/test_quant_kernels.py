"""The fused CPU kernels of the eager op (`geta.quant.kernels`) against the plain implementation.

The plain implementation (kernels off) is itself checked against the slow formulas of
docs/method.md §1 in test_quant_functional_exact.py. Here: the fused kernels run where they should
(large dense CPU tensors, any layout) and nowhere else; with the exponent exactly 1 they are the
plain op bit for bit; with a learned exponent (exp(t ln m) instead of ``pow``) a value may sit on
the other side of a half step, so the forward may differ there by exactly one step, and nowhere
else; the input gradient is the same bit for bit; the scalar gradients agree to float rounding;
a compile failure falls back to the plain path with one warning.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from torch import Tensor

import geta
from geta.config import STE
from geta.quant import functional as F
from geta.quant import kernels
from geta.quant.kernels import MIN_ELEMENTS, use_fused_kernels

STEP, QMAX = 2 / 127, 1.5


def grads_of(x: Tensor, g: Tensor, t: float, signed: bool, ste: STE, fused: bool) -> list[Tensor]:
    """[Q(x), dL/dx, dL/dd, dL/dq_m, dL/dt] of one eager call, kernels on or off."""
    leaves = [x.detach().clone().requires_grad_(True)]
    leaves += [torch.tensor(v).requires_grad_(True) for v in (STEP, QMAX, t)]
    with use_fused_kernels(fused):
        y = F.fake_quant(*leaves, signed=signed, ste=ste)
        y.backward(g)
    return [y.detach(), *(leaf.grad for leaf in leaves)]


def big(shape: tuple[int, ...] = (64, 9, 17), dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    x = torch.randn(shape) * 0.9
    x.view(-1)[:50] = 0.0
    x.view(-1)[50:100] = -0.0
    return x.to(dtype), torch.randn(shape).to(dtype)


def test_a_large_cpu_tensor_takes_the_fused_kernel_and_a_small_one_does_not() -> None:
    scalars = (torch.tensor(STEP), torch.tensor(QMAX), torch.tensor(0.9))
    assert kernels.forward(torch.randn(MIN_ELEMENTS), scalars, True, False) is not None
    assert kernels.forward(torch.randn(MIN_ELEMENTS - 1), scalars, True, False) is None
    assert kernels.forward(torch.randn(MIN_ELEMENTS, dtype=torch.float64), scalars, True, False) is None
    assert kernels.forward(torch.randn(2 * MIN_ELEMENTS)[::2], scalars, True, False) is None  # gaps
    with use_fused_kernels(False):
        assert kernels.forward(torch.randn(MIN_ELEMENTS), scalars, True, False) is None


@pytest.mark.parametrize("ste", list(STE))
@pytest.mark.parametrize("signed", [True, False])
def test_unit_exponent_is_the_plain_op_bit_for_bit_forward_and_input_gradient(signed: bool, ste: STE) -> None:
    x, g = big()
    fused, plain = grads_of(x, g, 1.0, signed, ste, True), grads_of(x, g, 1.0, signed, ste, False)
    assert torch.equal(fused[0], plain[0]) and torch.equal(fused[1], plain[1])
    # signed: -0 stays -0 in both; unsigned: the fused kernel gives +0 for x = -0, as the general
    # formula (s = 0) does, where the plain t = 1 shortcut's clamp keeps -0
    assert torch.equal(fused[0].signbit(), plain[0].signbit()) or not signed
    for a, b in zip(fused[2:], plain[2:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ste", list(STE))
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("t", [0.8, 1.25])
def test_learned_exponent_matches_the_plain_op_up_to_a_half_step_tie(
    t: float, signed: bool, ste: STE
) -> None:
    x, g = big()
    fused, plain = grads_of(x, g, t, signed, ste, True), grads_of(x, g, t, signed, ste, False)
    moved = fused[0] != plain[0]
    assert moved.float().mean() < 1e-3  # exp(t ln m) and pow differ in the last bit at most
    assert torch.allclose((fused[0] - plain[0]).abs()[moved], torch.tensor(STEP), rtol=1e-5)
    assert torch.equal(fused[1], plain[1])  # the pass band does not involve the power
    for a, b in zip(fused[2:], plain[2:]):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=1e-3)


def layouts() -> dict[str, Tensor]:
    base = torch.randn(8, 16, 12, 10)
    return {
        "channels-last": base.to(memory_format=torch.channels_last),
        "transposed": torch.randn(8, 12, 16, 10).transpose(1, 2),
        "offset": torch.randn(9, 16, 12, 10)[1:],
    }


@pytest.mark.parametrize("name", list(layouts()))
def test_any_dense_layout_gives_the_contiguous_results_in_its_own_layout(name: str) -> None:
    x = layouts()[name]
    g = torch.randn(x.shape)  # contiguous: a layout other than x's (copied into x's)
    strided = grads_of(x, g, 0.9, True, STE.CLIPPED, True)
    dense = grads_of(x.contiguous(), g, 0.9, True, STE.CLIPPED, True)
    assert strided[0].stride() == x.stride()
    assert torch.equal(strided[0], dense[0]) and torch.equal(strided[1], dense[1])
    for a, b in zip(strided[2:], dense[2:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_compute_in_float32_and_keep_their_dtype(dtype: torch.dtype) -> None:
    x, g = big(dtype=dtype)
    fused, plain = grads_of(x, g, 1.0, True, STE.CLIPPED, True), grads_of(x, g, 1.0, True, STE.CLIPPED, False)
    assert fused[0].dtype == dtype and fused[1].dtype == dtype and fused[2].dtype == torch.float32
    assert torch.equal(fused[0], plain[0]) and torch.equal(fused[1], plain[1])


def test_the_kernels_are_deterministic_and_recompute_rebuilds_the_forward_exactly() -> None:
    x, g = big()
    first, again = grads_of(x, g, 0.9, True, STE.CLIPPED, True), grads_of(x, g, 0.9, True, STE.CLIPPED, True)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    q = geta.quant.LearnableQuantizer(init_bits=4)
    with torch.no_grad():
        q.exponent.fill_(0.9)
    lin = torch.randn(x.shape[-1], 5)
    grads = []
    for recompute in (True, False):
        w = lin.clone().requires_grad_(True)
        with geta.quant.recompute_quantized() if recompute else contextlib.nullcontext():
            (q(x) @ w).sum().backward()  # w's gradient reads Q(x): saved, or rebuilt by recompute
        grads.append(w.grad)
    assert torch.equal(grads[0], grads[1])


def test_the_eager_path_is_the_registered_op_bit_for_bit() -> None:
    """`fake_quant` in eager mode skips the dispatcher; the op itself gives the same bits."""
    for fused in (True, False):
        x, g = big()
        leaves = [
            x.clone().requires_grad_(True),
            *(torch.tensor(v).requires_grad_(True) for v in (STEP, QMAX, 0.9)),
        ]
        twins = [v.detach().clone().requires_grad_(True) for v in leaves]
        with use_fused_kernels(fused):
            F.fake_quant(*leaves).backward(g)
            torch.ops.geta.fake_quant(*twins, True, "clipped").backward(g)
        assert all(torch.equal(a.grad, b.grad) for a, b in zip(leaves, twins))


def test_inference_mode_and_no_grad_calls_work() -> None:
    x, _ = big()
    scalars = (torch.tensor(STEP), torch.tensor(QMAX), torch.tensor(0.9))
    with torch.no_grad():
        expected = F.fake_quant(x, *scalars)
    with torch.inference_mode():
        assert torch.equal(F.fake_quant(x, *scalars), expected)


def test_a_compile_failure_warns_once_and_falls_back_to_the_plain_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail(*args: object) -> None:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(kernels, "_compile", fail)
    monkeypatch.setattr(kernels, "_compiled", {})
    monkeypatch.setattr(kernels, "_broken", None)
    x, g = big()
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        got = grads_of(x, g, 0.9, True, STE.CLIPPED, True)
    assert not kernels.enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        again = grads_of(x, g, 0.9, True, STE.CLIPPED, True)
    plain = grads_of(x, g, 0.9, True, STE.CLIPPED, False)
    assert all(torch.equal(a, b) for a, b in zip(got, plain)) and all(
        torch.equal(a, b) for a, b in zip(again, plain)
    )


def test_a_kernel_first_compiled_under_autocast_keeps_its_dtypes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "_compiled", {})  # this process compiles the variants afresh
    x, g = big()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = grads_of(x, g, 0.9, True, STE.CLIPPED, True)
    monkeypatch.setattr(kernels, "_compiled", {})
    outside = grads_of(x, g, 0.9, True, STE.CLIPPED, True)
    assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(under, outside))
