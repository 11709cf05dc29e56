"""Pure math of the learnable quantizer (method.md §1).

Forward (§1.1), with per-tensor learnable scalars ``step`` (d), ``qmax`` (q_m) and
``exponent`` (t)::

    u(x) = min(|x|, qmax) ** exponent
    Q(x) = sign(x) * step * round(u(x) / step)

The whole fake-quantizer is ONE registered custom op, ``torch.ops.geta.fake_quant``, with its
own straight-through backward (§1.3). Being one op means that a model holding geta quantizers
captures (``torch.export``) as one node per quantizer, which the graph analysis treats as a
shape-preserving pass-through and the ONNX export maps to QuantizeLinear/DequantizeLinear.

Bit algebra (§1.2): ``bits``, ``step_for_bits``, ``step_interval``, ``project_step``; and the
deployment view: ``integer_codes`` (k, with ``fake_quant(x) == k * step`` exactly) and
``code_range`` (the integer clip range of b bits).

Numerics. Half-precision inputs (bfloat16, float16) are computed in float32 and the result is
cast back to the input dtype; float64 stays float64. ``step`` is floored at `MIN_STEP` and
``qmax`` at `MIN_QMAX` inside the math, so that no formula ever divides by zero or takes a
fractional power of a negative number, even if an optimizer pushed a scalar out of range.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from geta.config import STE

__all__ = [
    "LN_EPS",
    "MIN_QMAX",
    "MIN_STEP",
    "STE_FIXED_BOUND",
    "bits",
    "code_range",
    "fake_quant",
    "integer_codes",
    "project_step",
    "step_for_bits",
    "step_interval",
]

MIN_STEP = 1e-20  # floor of step (d) inside the math: never divide by zero
MIN_QMAX = 1e-8  # floor of qmax (q_m): min(|x|, qmax) stays positive, so u**t is defined
LN_EPS = 1e-12  # ln(min(|x|, qmax)) is taken of max(., LN_EPS) in dL/dexponent
STE_FIXED_BOUND = 2.0  # STE.FIXED passes the input gradient where |x| <= 2 (authors' release)

Number = float | int


# ---------------------------------------------------------------------------------------------
# Shared elementwise pieces (pure; used by the op's forward, its backward and integer_codes)
# ---------------------------------------------------------------------------------------------


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; float32 and the half types compute in float32."""
    return torch.promote_types(x.dtype, torch.float32)


def _scalars(x: Tensor, step: Tensor, qmax: Tensor, exponent: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(d, q_m, t) in the compute dtype of ``x``, with the positivity floors applied."""
    dt = _compute_dtype(x)
    d = step.to(dt).clamp_min(MIN_STEP)
    q = qmax.to(dt).clamp_min(MIN_QMAX)
    return d, q, exponent.to(dt)


def _sign_and_magnitude(xc: Tensor, q: Tensor, signed: bool) -> tuple[Tensor, Tensor]:
    """(s, m): the sign used on the grid and the clipped magnitude m = min(|x|, q_m).

    Unsigned: x is first clamped to [0, q_m] (negative -> 0), so s is 1 for x > 0 and 0 else.
    """
    if signed:
        return torch.sign(xc), torch.minimum(xc.abs(), q)
    return (xc > 0).to(xc.dtype), torch.minimum(xc.clamp_min(0.0), q)


class _Grid(NamedTuple):
    """Everything the forward and the backward share, in the compute dtype of x."""

    d: Tensor  # step (0-dim, floored)
    q: Tensor  # qmax (0-dim, floored)
    t: Tensor  # exponent (0-dim)
    s: Tensor  # sign used on the grid, shape of x
    m: Tensor  # clipped magnitude min(|x|, q_m), shape of x
    u: Tensor  # u(x) = m ** t, shape of x
    v: Tensor  # u / d: position on the grid before rounding, shape of x
    r: Tensor  # round(u / d), shape of x


def _grid(x: Tensor, step: Tensor, qmax: Tensor, exponent: Tensor, signed: bool) -> _Grid:
    d, q, t = _scalars(x, step, qmax, exponent)
    s, m = _sign_and_magnitude(x.to(d.dtype), q, signed)
    u = m**t
    v = u / d
    return _Grid(d, q, t, s, m, u, v, torch.round(v))


def _forward(x: Tensor, step: Tensor, qmax: Tensor, exponent: Tensor, signed: bool) -> Tensor:
    g = _grid(x, step, qmax, exponent, signed)
    # Q(x) = sign(x) * d * round(u/d); (s * d) is exactly ±d or 0, so Q == k * d bit for bit.
    return (g.s * g.d * g.r).to(x.dtype)


def _passband(x: Tensor, q: Tensor, signed: bool, ste: STE) -> Tensor:
    """Where dL/dx = g flows through (bool, shape of x); zero gradient elsewhere."""
    bound = q if ste is STE.CLIPPED else torch.full_like(q, STE_FIXED_BOUND)
    inside = x.abs() <= bound
    return inside if signed else inside & (x >= 0)


def _backward(
    g: Tensor, x: Tensor, step: Tensor, qmax: Tensor, exponent: Tensor, signed: bool, ste: STE
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The straight-through gradients of method.md §1.3 for g = dL/dQ (shape of x)."""
    d, q, t, s, m, u, v, r = _grid(x, step, qmax, exponent, signed)
    xc = x.to(d.dtype)
    gs = g.to(d.dtype) * s  # g * sign(x), shape of x
    grad_x = torch.where(_passband(xc, q, signed, ste), g, torch.zeros_like(g))
    # dL/dd = sum g * sign(x) * (round(u/d) - u/d)
    grad_step = (gs * (r - v)).sum()
    # dL/dq_m = sum over |x| > q_m of g * sign(x) * t * q_m**(t-1)
    clipped = (xc.abs() > q) if signed else (xc > q)
    grad_qmax = torch.where(clipped, gs, torch.zeros_like(gs)).sum() * t * q ** (t - 1)
    # dL/dt = sum g * sign(x) * u * ln(max(min(|x|, q_m), eps))
    grad_exponent = (gs * u * torch.log(m.clamp_min(LN_EPS))).sum()
    return (
        grad_x,
        grad_step.to(step.dtype).reshape(step.shape),
        grad_qmax.to(qmax.dtype).reshape(qmax.shape),
        grad_exponent.to(exponent.dtype).reshape(exponent.shape),
    )


# ---------------------------------------------------------------------------------------------
# The registered op: one node in any captured graph
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("geta::fake_quant", mutates_args=())
def _fake_quant_op(x: Tensor, step: Tensor, qmax: Tensor, exponent: Tensor, signed: bool, ste: str) -> Tensor:
    """``torch.ops.geta.fake_quant``: Q(x) of §1.1; ``ste`` is an `STE` value string."""
    return _forward(x, step, qmax, exponent, signed)


@_fake_quant_op.register_fake
def _fake_quant_meta(
    x: Tensor, step: Tensor, qmax: Tensor, exponent: Tensor, signed: bool, ste: str
) -> Tensor:
    return torch.empty_like(x)  # shape-, dtype- and device-preserving


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    x, step, qmax, exponent, signed, ste = inputs
    ctx.save_for_backward(x, step, qmax, exponent)
    ctx.signed = signed  # type: ignore[attr-defined]
    ctx.ste = STE(ste)  # type: ignore[attr-defined]


def _backward_op(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple:
    x, step, qmax, exponent = ctx.saved_tensors  # type: ignore[attr-defined]
    grads = _backward(grad, x, step, qmax, exponent, ctx.signed, ctx.ste)  # type: ignore[attr-defined]
    return (*grads, None, None)  # no gradient for `signed` and `ste`


_fake_quant_op.register_autograd(_backward_op, setup_context=_setup_context)


def fake_quant(
    x: Tensor,
    step: Tensor,
    qmax: Tensor,
    exponent: Tensor,
    *,
    signed: bool = True,
    ste: STE = STE.CLIPPED,
) -> Tensor:
    """Fake-quantize ``x``: Q(x) = sign(x) * step * round(min(|x|, qmax)**exponent / step).

    ``step`` (d), ``qmax`` (q_m) and ``exponent`` (t) are 0-dim tensors, usually learnable.
    Unsigned (``signed=False``): x is clamped to [0, qmax] first; the grid is {0, step, ...}.
    Gradients are the straight-through estimator of method.md §1.3; ``ste`` chooses where the
    input gradient flows (`STE.CLIPPED`: |x| <= qmax; `STE.FIXED`: |x| <= 2).

    >>> x = torch.tensor([-1.5, -0.26, 0.0, 0.3, 0.74])
    >>> fake_quant(x, torch.tensor(0.25), torch.tensor(1.0), torch.tensor(1.0))
    tensor([-1.0000, -0.2500,  0.0000,  0.2500,  0.7500])
    >>> fake_quant(x, torch.tensor(0.25), torch.tensor(1.0), torch.tensor(1.0), signed=False)
    tensor([0.0000, 0.0000, 0.0000, 0.2500, 0.7500])
    """
    return torch.ops.geta.fake_quant(x, step, qmax, exponent, bool(signed), STE(ste).value)


# ---------------------------------------------------------------------------------------------
# Bit algebra (§1.2) and the deployment view
# ---------------------------------------------------------------------------------------------


def _levels(b: Tensor | Number, signed: bool) -> Tensor | float:
    """Largest integer code of b bits: 2**(b-1) - 1 (signed) or 2**b - 1 (unsigned)."""
    return 2.0 ** (b - 1) - 1 if signed else 2.0**b - 1


def _span(qmax: Tensor | Number, exponent: Tensor | Number) -> Tensor:
    """q_m ** t: the largest magnitude u can reach (qmax floored at `MIN_QMAX`)."""
    return torch.as_tensor(qmax).clamp_min(MIN_QMAX) ** exponent


def bits(
    step: Tensor | Number, qmax: Tensor | Number, exponent: Tensor | Number, *, signed: bool = True
) -> Tensor:
    """Real-valued bit width implied by the scalars: log2(qmax**exponent / step + 1) + 1.

    The ``+ 1`` is the sign bit (dropped when ``signed=False``).

    >>> float(bits(torch.tensor(1 / 127), torch.tensor(1.0), torch.tensor(1.0)))
    8.0
    """
    d = torch.as_tensor(step).clamp_min(MIN_STEP)
    return torch.log2(_span(qmax, exponent) / d + 1) + (1 if signed else 0)


def step_for_bits(
    b: Tensor | Number, qmax: Tensor | Number, exponent: Tensor | Number, *, signed: bool = True
) -> Tensor:
    """The step of a ``b``-bit grid over [0, qmax**exponent]: qmax**exponent / (2**(b-1) - 1).

    Unsigned: qmax**exponent / (2**b - 1). Inverse of `bits`; ``b`` must exceed 1 (signed) or
    0 (unsigned).

    >>> round(float(step_for_bits(8, torch.tensor(1.0), torch.tensor(1.0), signed=False)) * 255, 5)
    1.0
    """
    return _span(qmax, exponent) / _levels(b, signed)


def step_interval(
    qmax: Tensor | Number,
    exponent: Tensor | Number,
    b_lo: Tensor | Number,
    b_hi: Tensor | Number,
    *,
    signed: bool = True,
) -> tuple[Tensor, Tensor]:
    """(step_min, step_max) = (step_for_bits(b_hi), step_for_bits(b_lo)).

    A step inside this interval is exactly a bit width inside [b_lo, b_hi] for the current
    qmax and exponent, so projecting ``step`` alone enforces the bit constraint (§1.2).
    """
    if isinstance(b_lo, (int, float)) and isinstance(b_hi, (int, float)) and b_lo > b_hi:
        raise ValueError(f"step_interval: b_lo={b_lo} must be <= b_hi={b_hi}")
    return (
        step_for_bits(b_hi, qmax, exponent, signed=signed),
        step_for_bits(b_lo, qmax, exponent, signed=signed),
    )


def project_step(
    step: Tensor,
    qmax: Tensor | Number,
    exponent: Tensor | Number,
    b_lo: Tensor | Number,
    b_hi: Tensor | Number,
    *,
    signed: bool = True,
) -> Tensor:
    """``step`` clamped into `step_interval` (a new tensor; the input is not modified).

    >>> s = project_step(torch.tensor(0.5), torch.tensor(1.0), torch.tensor(1.0), 4, 8)
    >>> round(float(bits(s, torch.tensor(1.0), torch.tensor(1.0))), 6)
    4.0
    """
    lo, hi = step_interval(qmax, exponent, b_lo, b_hi, signed=signed)
    return torch.clamp(step, min=lo.to(step.dtype), max=hi.to(step.dtype))


def integer_codes(x: Tensor, step: Tensor, qmax: Tensor, exponent: Tensor, *, signed: bool = True) -> Tensor:
    """The integer code k = sign(x) * round(u/step) (int32), so that fake_quant(x) == k * step.

    ``k * step`` is computed in the same dtype as the fake-quant (float32 for half inputs).

    >>> integer_codes(torch.tensor([-0.6, 0.1, 2.0]), torch.tensor(0.25), torch.tensor(1.0),
    ...               torch.tensor(1.0))
    tensor([-2,  0,  4], dtype=torch.int32)
    """
    with torch.no_grad():
        grid = _grid(x, step, qmax, exponent, signed)
        return (grid.s * grid.r).to(torch.int32)


def code_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """Integer clip range of ``bits`` bits: [-(2**(b-1)-1), 2**(b-1)-1] or [0, 2**b - 1].

    The signed range is symmetric (no -2**(b-1)) because the grid of §1.1 is symmetric.

    >>> code_range(4), code_range(4, signed=False)
    ((-7, 7), (0, 15))
    """
    b = int(bits)
    if b != bits or b < (2 if signed else 1):
        raise ValueError(
            f"code_range: bits={bits!r} must be an integer >= {2 if signed else 1} "
            f"({'signed' if signed else 'unsigned'}); round a real-valued bit width first"
        )
    hi = 2 ** (b - 1) - 1 if signed else 2**b - 1
    return (-hi if signed else 0, hi)
