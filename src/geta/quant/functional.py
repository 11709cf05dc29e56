"""Pure math of the learnable quantizer (docs/method.md §1).

Forward (§1.1), with per-tensor learnable scalars ``step`` (d), ``qmax`` (q_m) and
``exponent`` (t)::

    u(x) = min(|x|, qmax) ** exponent
    Q(x) = sign(x) * step * round(u(x) / step)

The whole fake-quantizer is ONE registered custom op, ``torch.ops.geta.fake_quant``, with its
own straight-through backward (§1.3). Being one op means that a model holding geta quantizers
captures (``torch.export``) as one node per quantizer, which the graph analysis treats as a
shape-preserving pass-through and the ONNX export maps to QuantizeLinear/DequantizeLinear.
Under ``torch.compile`` (not export) ``fake_quant`` runs `geta.quant.fusable` instead: the same
math as plain ops, which inductor can fuse with the neighbouring ops.

Bit algebra (§1.2): ``bits``, ``step_for_bits``, ``step_interval``, ``project_step``; and the
deployment view: ``integer_codes`` (k, with ``fake_quant(x) == k * step`` exactly) and
``code_range`` (the integer clip range of b bits).

Numerics. Half-precision inputs (bfloat16, float16) are computed in float32 and the result is
cast back to the input dtype; float64 stays float64. ``step`` is floored at `MIN_STEP` and
``qmax`` at `MIN_QMAX` inside the math, so that no formula ever divides by zero or takes a
fractional power of a negative number, even if an optimizer pushed a scalar out of range.

Speed and memory. In plain eager mode ``fake_quant`` calls the op's forward and backward
directly (`_EagerFakeQuant`: the same functions without the dispatcher's round trip), and on
the CPU a tensor of `geta.quant.kernels.MIN_ELEMENTS` elements or more runs them as one fused,
compiled loop each (`geta.quant.kernels`: the same formulas, a learned exponent's power as
exp(t ln m), equal to the plain implementation up to the last bits). The plain implementation
(smaller tensors, float64, accelerators, kernels off) works in place on a few temporaries; its
backward (`geta.quant.ste`) computes only the gradients autograd asks for, and a large tensor
piece by piece, so that its only full-size tensor is dL/dx. There an exponent of exactly 1 (the
initial value) skips ``pow`` on the CPU (the forward is then four or five elementwise passes);
the results are bit for bit those of the general path, signed zeros included, and so are the
sums of the scalar gradients, whatever the memory layouts of x and of the incoming gradient. On
accelerators the exponent is not read (that would be a host sync per call), so ``pow`` always
runs there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geta.config import STE
from geta.quant import kernels
from geta.quant.fusable import fusable_fake_quant
from geta.quant.limits import LN_EPS, MIN_QMAX, MIN_STEP, STE_FIXED_BOUND, floored_scalars
from geta.quant.recompute import RECIPE
from geta.quant.ste import ste_backward

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


Number = float | int
_FLOAT_TYPES = frozenset({torch.float32, torch.float64, torch.bfloat16, torch.float16})


# ---------------------------------------------------------------------------------------------
# Shared elementwise pieces (pure; used by the op's forward, its backward and integer_codes)
# ---------------------------------------------------------------------------------------------


_EAGER = (Tensor, torch.nn.Parameter)  # exact types whose value `_exactly_one` may read


def _exactly_one(t: Tensor) -> bool:
    """Whether the exponent is exactly 1, asked only where the answer is free.

    Only an eager CPU tensor is read (one scalar read, no device sync). On an accelerator the
    read would be a host sync, and a meta, fake or functional tensor (tracing, export) has no
    value: there the answer is False, which only means the general path with ``pow``.
    """
    return type(t) in _EAGER and t.device.type == "cpu" and float(t) == 1.0


def _sign_and_magnitude(xc: Tensor, q: Tensor, signed: bool) -> tuple[Tensor, Tensor]:
    """(s, m): the sign used on the grid and the clipped magnitude m = min(|x|, q_m).

    Unsigned: x is first clamped to [0, q_m] (negative -> 0), so s is 1 for x > 0 and 0 else.
    Both are new tensors, free to be overwritten in place.
    """
    if signed:
        return torch.sign(xc), xc.abs().clamp_max_(q)
    return (xc > 0).to(xc.dtype), xc.clamp_min(0.0).clamp_max_(q)


def _forward(x: Tensor, step: Tensor, qmax: Tensor, exponent: Tensor, signed: bool) -> Tensor:
    unit = _exactly_one(exponent)  # the raw exponent: widening keeps a value of exactly 1
    fused = kernels.forward(x, (step, qmax, exponent), signed, unit)
    if fused is not None:
        return fused
    d, q, t = floored_scalars(x, step, qmax, exponent)
    xc = x.to(d.dtype)
    if unit:
        return _forward_linear(xc, d, q, signed).to(x.dtype)
    s, m = _sign_and_magnitude(xc, q, signed)
    r = m.pow_(t).div_(d).round_()  # round(u/d), in place in m
    # Q(x) = (sign(x) * d) * round(u/d); (s * d) is exactly ±d or 0, so Q == k * d bit for bit.
    return s.mul_(d).mul_(r).to(x.dtype)


def _forward_linear(xc: Tensor, d: Tensor, q: Tensor, signed: bool) -> Tensor:
    """Q(x) for t == 1 exactly in four or five passes, bit for bit the general formula.

    With c = clamp(x, -q_m, q_m) (unsigned: [0, q_m]), c / d = sign(x) * (m / d) exactly and
    round is symmetric, so round(c / d) * d == (sign(x) * d) * round(m / d), signed zeros
    included once a -0 input is turned into +0 (sign(-0) is 0, so the formula gives +0 there).
    """
    qf = float(q)  # CPU only (see `_exactly_one`); a float bound is the fast clamp kernel
    c = xc.clamp(-qf if signed else 0.0, qf)
    if signed:
        c.add_(0.0)  # -0 -> +0; every other value unchanged
    return c.div_(d).round_().mul_(d)


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
    needs = tuple(ctx.needs_input_grad[:4])  # type: ignore[attr-defined]
    signed, ste = ctx.signed, ctx.ste  # type: ignore[attr-defined]
    scalars, unit = (step, qmax, exponent), _exactly_one(exponent)
    grads = kernels.backward(grad, x, scalars, signed, ste, needs, unit)
    if grads is None:
        grads = ste_backward(grad, x, scalars, signed, ste, needs, unit)
    return (*grads, None, None)  # no gradient for `signed` and `ste`


_fake_quant_op.register_autograd(_backward_op, setup_context=_setup_context)


class _EagerFakeQuant(torch.autograd.Function):
    """The op's forward and backward, called without the dispatcher's round trip.

    In plain eager mode (`_plain_eager`) nothing needs the op as a node, and going through
    ``torch.library``'s dispatch and autograd wrappers cost about 40 µs a forward and 60 µs a
    backward here: on a small transformer, with a quantizer at every weight and layer input,
    more than the arithmetic. Same functions, so the same values bit for bit.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        step: Tensor,
        qmax: Tensor,
        exponent: Tensor,
        signed: bool,
        ste: str,
    ) -> Tensor:
        _setup_context(ctx, (x, step, qmax, exponent, signed, ste), None)  # type: ignore[arg-type]
        return _forward(x, step, qmax, exponent, signed)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple:  # type: ignore[override]
        return _backward_op(ctx, grad)


def _plain_eager(*tensors: Tensor) -> bool:
    """Whether a call may skip the registered op: plain tensors, no tracing (export, ``jit``,
    ``torch.func`` transforms) and no dispatch mode (fake tensors, FLOP counters) to see it."""
    return (
        all(type(t) in _EAGER for t in tensors)
        and torch._C._len_torch_dispatch_stack() == 0
        and torch._C._functorch.peek_interpreter_stack() is None
        and not torch.jit.is_tracing()
        and not torch.compiler.is_exporting()
    )


def fake_quant(
    x: Tensor,
    step: Tensor,
    qmax: Tensor,
    exponent: Tensor,
    *,
    signed: bool = True,
    ste: STE = STE.CLIPPED,
    unit_exponent: bool = False,
) -> Tensor:
    """Fake-quantize ``x``: Q(x) = sign(x) * step * round(min(|x|, qmax)**exponent / step).

    ``step`` (d), ``qmax`` (q_m) and ``exponent`` (t) are 0-dim tensors, usually learnable.
    Unsigned (``signed=False``): x is clamped to [0, qmax] first; the grid is {0, step, ...}.
    Gradients are the straight-through estimator of docs/method.md §1.3; ``ste`` chooses where the
    input gradient flows (`STE.CLIPPED`: |x| <= qmax; `STE.FIXED`: |x| <= 2).

    Under ``torch.export`` this is the op ``torch.ops.geta.fake_quant`` (one node); under
    ``torch.compile`` it is `geta.quant.fusable.fusable_fake_quant`, the same math as plain ops
    that inductor fuses with its neighbours; in eager mode the two are equal bit for bit.
    ``unit_exponent=True`` promises that ``exponent`` is exactly 1 and gets no gradient
    (`LearnableQuantizer.unit_exponent`): the compiled math then has no ``pow`` and no ``log``.

    >>> x = torch.tensor([-1.5, -0.26, 0.0, 0.3, 0.74])
    >>> fake_quant(x, torch.tensor(0.25), torch.tensor(1.0), torch.tensor(1.0))
    tensor([-1.0000, -0.2500,  0.0000,  0.2500,  0.7500])
    >>> fake_quant(x, torch.tensor(0.25), torch.tensor(1.0), torch.tensor(1.0), signed=False)
    tensor([0.0000, 0.0000, 0.0000, 0.2500, 0.7500])
    """
    if x.dtype not in _FLOAT_TYPES:
        raise TypeError(
            f"fake_quant: x has dtype {x.dtype}; geta fake-quantizes float32, float64, bfloat16 "
            "or float16 tensors (cast integer or float8 data to one of them first)"
        )
    if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
        return fusable_fake_quant(
            x, step, qmax, exponent, signed=signed, ste=ste, unit_exponent=unit_exponent
        )
    if _plain_eager(x, step, qmax, exponent):
        out = _EagerFakeQuant.apply(x, step, qmax, exponent, bool(signed), STE(ste).value)
    else:
        out = torch.ops.geta.fake_quant(x, step, qmax, exponent, bool(signed), STE(ste).value)
    if out.requires_grad and type(out) is Tensor:  # eager: `recompute_quantized` may rebuild it
        setattr(out, RECIPE, (x, step, qmax, exponent, bool(signed)))
    return out


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
        d, q, t = floored_scalars(x, step, qmax, exponent)
        s, m = _sign_and_magnitude(x.to(d.dtype), q, signed)
        u = m if _exactly_one(t) else m.pow_(t)
        return s.mul_(u.div_(d).round_()).to(torch.int32)


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
