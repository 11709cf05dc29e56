"""The fake-quantizer as plain tensor ops, for ``torch.compile`` to fuse (docs/method.md §1.1, §1.3).

`geta.quant.functional.fake_quant` is one registered custom op, ``torch.ops.geta.fake_quant``:
``torch.export`` keeps it as one node per quantizer (the graph analysis and the ONNX export rely
on that), but inductor cannot look inside it, so under ``torch.compile`` every quantizer would
be an opaque call with its own passes over memory. While ``torch.compile`` traces (and only then:
not under ``torch.export``), ``fake_quant`` calls `fusable_fake_quant` instead: the same forward
and the same straight-through backward written as ordinary elementwise ops and sums, which
inductor fuses with the neighbouring ops (the weight's quantizer with nothing else to read, an
activation quantizer with the norm or activation before it).

In eager mode `fusable_fake_quant` equals the op bit for bit (forward and all four gradients;
tests/quant/test_quant_fusable.py). A compiled graph may differ from eager in the last bits: the
scalar gradients are sums that inductor orders its own way, as for any compiled reduction, and a
learned exponent's u = m ** t is computed as exp(t ln m) there (`_power`: half the time of a
compiled ``pow``), which can move a rounding residual's last bit. A fixed exponent of exactly 1
(``unit_exponent``) computes no power at all.

The backward saves x and the three scalars only (like the op); everything else is recomputed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geta.config import STE
from geta.quant.limits import LN_EPS, STE_FIXED_BOUND, floored_scalars

__all__ = ["fusable_fake_quant", "quantize", "ste_grads"]

_LN_OF_EPS = math.log(LN_EPS)  # ln max(m, eps) = max(ln m, ln eps): ln is increasing


def _sign_magnitude(xc: Tensor, q: Tensor, signed: bool) -> tuple[Tensor, Tensor]:
    """(s, m): the grid sign (unsigned: 1 for x > 0, else 0) and m = min(|x|, q_m)."""
    if signed:
        return torch.sign(xc), xc.abs().clamp_max(q)
    return (xc > 0).to(xc.dtype), xc.clamp_min(0.0).clamp_max(q)


def _power(m: Tensor, t: Tensor, exp_log: bool) -> tuple[Tensor, Tensor | None]:
    """(u, ln m): u = m ** t of the magnitudes m >= 0, and ln m where it was computed (else None).

    ``exp_log`` False: ``pow`` itself, so that this module in eager mode is the op bit for bit.
    True (while ``torch.compile`` traces, and in `geta.quant.kernels`): exp(t ln m), which
    inductor vectorises (a compiled ``pow`` over 1 M floats took 3.1 ms here, exp(t ln m)
    1.4 ms) and whose ln m the backward reuses for dL/dt. The two agree to the last bit or two
    (t > 0, which QASSO keeps in `geta.optim.rules.EXPONENT_RANGE`; m = 0 gives exp(-inf) = 0),
    so a compiled run may round a value sitting exactly on a half step the other way, as
    compiled sums may order additions their own way.
    """
    if not exp_log:
        return m.pow(t), None
    ln_m = torch.log(m)
    return torch.exp(t * ln_m), ln_m


def quantize(
    x: Tensor, step: Tensor, qmax: Tensor, exponent: Tensor, signed: bool, unit: bool, exp_log: bool = False
) -> Tensor:
    """Q(x) = (sign(x) d) round(m ** t / d) as plain ops, no autograd of its own: in the order of
    the op (so equal bit for bit); ``unit``: t is exactly 1 (m ** 1 == m bit for bit);
    ``exp_log``: see `_power`. The scalars broadcast: a (K, 1) ``step`` and ``qmax`` against an
    (N,) x give the K grids' values, (K, N).

    >>> quantize(torch.tensor([0.3, -0.9]), torch.tensor([[0.25], [0.5]]), torch.tensor([[1.0], [1.0]]),
    ...          torch.tensor(1.0), True, True)
    tensor([[ 0.2500, -1.0000],
            [ 0.5000, -1.0000]])
    """
    d, q, t = floored_scalars(x, step, qmax, exponent)
    xc = x.to(d.dtype)
    s, m = _sign_magnitude(xc, q, signed)
    return (s * d * torch.round((m if unit else _power(m, t, exp_log)[0]) / d)).to(x.dtype)


def ste_grads(
    g: Tensor,
    x: Tensor,
    scalars: tuple[Tensor, Tensor, Tensor],
    signed: bool,
    ste: STE,
    needs: tuple[bool, ...],
    unit: bool,
    exp_log: bool,
) -> tuple[Tensor | None, ...]:
    """(dL/dx, dL/dd, dL/dq_m, dL/dt) of docs/method.md §1.3, None where ``needs`` is False, for
    g = dL/dQ(x): plain ops, no autograd of their own (``unit`` and ``exp_log`` as in `quantize`).
    """
    step, qmax, exponent = scalars
    d, q, t = floored_scalars(x, step, qmax, exponent)
    xc = x.to(d.dtype)
    s, m = _sign_magnitude(xc, q, signed)
    grad_x = grad_step = grad_qmax = grad_exponent = None
    if needs[0]:  # g where |x| <= bound (and x >= 0 when unsigned)
        bound = q if ste is STE.CLIPPED else torch.full_like(q, STE_FIXED_BOUND)
        passband = xc.abs() <= bound if signed else (xc.abs() <= bound) & (xc >= 0)
        grad_x = torch.where(passband, g, torch.zeros((), dtype=g.dtype, device=g.device))
    gs = g.to(d.dtype) * s
    u, ln_m = (m, None) if unit else _power(m, t, exp_log)
    if needs[1]:  # sum g s (round(u/d) - u/d)
        v = u / d
        grad_step = ((torch.round(v) - v) * gs).sum().to(step.dtype).reshape(step.shape)
    if needs[2]:  # sum over the clipped elements of g s t q_m ** (t - 1)
        clipped = xc.abs() > q if signed else xc > q
        zero = torch.zeros((), dtype=gs.dtype, device=gs.device)
        clipped_sum = torch.where(clipped, gs, zero).sum()
        slope = clipped_sum if unit else clipped_sum * t * q ** (t - 1)  # t q_m^(t-1) is 1 * 1 at t = 1
        grad_qmax = slope.to(qmax.dtype).reshape(qmax.shape)
    if needs[3]:  # sum g s u ln(max(m, eps))
        ln_floored = m.clamp_min(LN_EPS).log() if ln_m is None else ln_m.clamp_min(_LN_OF_EPS)
        grad_exponent = (gs * u * ln_floored).sum()
        grad_exponent = grad_exponent.to(exponent.dtype).reshape(exponent.shape)
    return grad_x, grad_step, grad_qmax, grad_exponent


class _FusableFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        step: Tensor,
        qmax: Tensor,
        exponent: Tensor,
        signed: bool,
        ste: STE,
        unit: bool,
    ) -> Tensor:
        ctx.save_for_backward(x, step, qmax, exponent)
        ctx.signed, ctx.ste, ctx.unit = signed, ste, unit  # type: ignore[attr-defined]
        return quantize(x, step, qmax, exponent, signed, unit, torch.compiler.is_compiling())

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple:  # type: ignore[override]
        x, step, qmax, exponent = ctx.saved_tensors  # type: ignore[attr-defined]
        needs = tuple(ctx.needs_input_grad[:4])  # type: ignore[attr-defined]
        exp_log = torch.compiler.is_compiling()
        grads = ste_grads(grad, x, (step, qmax, exponent), ctx.signed, ctx.ste, needs, ctx.unit, exp_log)  # type: ignore[attr-defined]
        return (*grads, None, None, None)


def fusable_fake_quant(
    x: Tensor,
    step: Tensor,
    qmax: Tensor,
    exponent: Tensor,
    *,
    signed: bool = True,
    ste: STE = STE.CLIPPED,
    unit_exponent: bool = False,
) -> Tensor:
    """`geta.quant.functional.fake_quant` as plain ops (same arguments, same values, same STE).

    ``fake_quant`` dispatches here by itself while ``torch.compile`` traces; call it directly
    only to compare the two paths.

    >>> x = torch.tensor([-1.5, -0.26, 0.0, 0.3, 0.74])
    >>> fusable_fake_quant(x, torch.tensor(0.25), torch.tensor(1.0), torch.tensor(1.0))
    tensor([-1.0000, -0.2500,  0.0000,  0.2500,  0.7500])
    """
    if unit_exponent and exponent.requires_grad:
        raise ValueError("fusable_fake_quant: unit_exponent=True promises an exponent without gradient")
    return _FusableFakeQuant.apply(x, step, qmax, exponent, bool(signed), STE(ste), bool(unit_exponent))
