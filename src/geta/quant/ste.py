"""The straight-through backward of the fake-quant op (docs/method.md §1.3), chunk by chunk.

For g = dL/dQ the backward gives dL/dx (g where x is in the pass band, a tensor the shape of x)
and three scalar gradients, each a sum over every element of x of a product of g, sign(x),
u = min(|x|, q_m) ** t and a few more elementwise factors. Written tensor by tensor, those
sums need four or five full-size temporaries (|x|, g * sign(x), u, a product, two masks): on a
large weight, an LM head for example, several hundred MB for an instant, at the moment of the
training step when the most activations are alive.

So a tensor of more than `CHUNK_ELEMENTS` elements (x and g contiguous; on an accelerator
`CHUNK_ELEMENTS_ACCELERATOR`) is processed by pieces of at most that many elements: dL/dx is
written straight into its one full-size output, and each scalar gradient is the sum of the
pieces' sums. The temporaries are then a few pieces, not a few copies of x (and on the CPU the
pieces stay in cache: the backward of a 32000 x 768 weight ran 1.5x faster). Every element of
dL/dx is the same bit for bit; the scalar sums may differ from one sum over the whole tensor in
the last bits (float rounding: a different order of additions, as between thread counts). A
tensor that fits in one piece, or x and g in different memory layouts, takes one piece: the
order of its sums is exactly the plain formulas' (tests/quant/test_quant_functional_exact.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from geta.config import STE
from geta.quant.limits import LN_EPS, STE_FIXED_BOUND, floored_scalars

__all__ = ["CHUNK_ELEMENTS", "CHUNK_ELEMENTS_ACCELERATOR", "ste_backward"]

CHUNK_ELEMENTS = 1 << 20  # elements per piece on the CPU (4 MiB of float32; cache-friendly too)
# on an accelerator each piece costs a dozen kernel launches: fewer, larger pieces (not yet
# measured on a GPU)
CHUNK_ELEMENTS_ACCELERATOR = 1 << 23

Needs = tuple[bool, bool, bool, bool]  # which of (x, step, qmax, exponent) want a gradient
Sums = tuple[Tensor | None, Tensor | None, Tensor | None]  # raw sums behind the scalar grads


def ste_backward(
    g: Tensor,
    x: Tensor,
    scalars: tuple[Tensor, Tensor, Tensor],
    signed: bool,
    ste: STE,
    needs: Needs,
    linear: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """(dL/dx, dL/dd, dL/dq_m, dL/dt) for g = dL/dQ(x); None where ``needs`` says no.

    ``scalars`` is (step, qmax, exponent); ``linear`` says the exponent is exactly 1, so that
    u = m needs no ``pow`` (the caller decides, as the forward does).
    """
    d, q, t = floored_scalars(x, *scalars)
    chunk = CHUNK_ELEMENTS if x.device.type == "cpu" else CHUNK_ELEMENTS_ACCELERATOR
    pieces = _pieces(g, x, chunk)
    grad_x = None
    if needs[0]:
        grad_x = g.new_empty(g.shape) if len(pieces) > 1 else None  # contiguous, as g is then
    parts: list[Sums] = []
    outs = grad_x.view(-1).split(chunk) if grad_x is not None else [None] * len(pieces)
    for (gi, xi), out in zip(pieces, outs):
        gx, *sums = _piece(gi, xi, (d, q, t), signed, ste, needs, linear, out)
        grad_x = gx if len(pieces) == 1 else grad_x
        parts.append(tuple(sums))  # type: ignore[arg-type]
    sums = tuple(_total([p[i] for p in parts]) for i in range(3))
    return (grad_x, *_finish(sums, q, t, scalars))  # type: ignore[return-value]


def _pieces(g: Tensor, x: Tensor, chunk: int) -> list[tuple[Tensor, Tensor]]:
    """(g, x) as flat pieces of ``chunk`` elements when both are contiguous and larger, else whole."""
    if x.numel() <= chunk or not (x.is_contiguous() and g.is_contiguous()):
        return [(g, x)]
    return list(zip(g.view(-1).split(chunk), x.view(-1).split(chunk)))


def _total(parts: list[Tensor | None]) -> Tensor | None:
    """The sum of the pieces' sums (the one sum itself when there is one piece)."""
    if parts[0] is None:
        return None
    return parts[0] if len(parts) == 1 else torch.stack(parts).sum()  # type: ignore[arg-type]


def _finish(sums: Sums, q: Tensor, t: Tensor, scalars: tuple[Tensor, Tensor, Tensor]) -> Sums:
    """The scalar gradients from their sums, each in the dtype and shape of its scalar."""
    grad_step, clipped_sum, grad_exponent = sums
    grad_qmax = None if clipped_sum is None else clipped_sum * t * q ** (t - 1)
    grads = (grad_step, grad_qmax, grad_exponent)
    return tuple(None if gr is None else gr.to(p.dtype).reshape(p.shape) for gr, p in zip(grads, scalars))  # type: ignore[return-value]


def _piece(
    g: Tensor,
    x: Tensor,
    dqt: tuple[Tensor, Tensor, Tensor],
    signed: bool,
    ste: STE,
    needs: Needs,
    linear: bool,
    out: Tensor | None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """dL/dx of one piece (into ``out`` when given) and the raw sums of the scalar gradients:
    sum g s (round(u/d) - u/d), sum over the clipped of g s, sum g s u ln(max(m, eps))."""
    d, q, t = dqt
    xc = x.to(d.dtype)
    need_scalars = any(needs[1:])
    passband, clipped, m = _clip(xc, q, signed, ste, (needs[0], needs[2], need_scalars))
    grad_x = None
    if passband is not None:  # a 0-dim zero: the fast kernel (a full zeros_like is ~8x slower)
        grad_x = torch.where(passband, g, torch.zeros((), dtype=g.dtype, device=g.device), out=out)
        del passband
    if m is None:
        return grad_x, None, None, None
    gs = _times_sign(g, xc, signed)
    u = m if linear else m**t  # u(x) = m ** t; m ** 1 == m bit for bit
    return (grad_x, *_scalar_sums(gs, m, u, clipped, d, needs[1:]))


def _clip(
    xc: Tensor, q: Tensor, signed: bool, ste: STE, needs: tuple[bool, bool, bool]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(passband, clipped, m), shape of x, each None unless its flag in ``needs`` is set.

    passband (bool): where dL/dx = g flows, |x| <= q_m (`STE.CLIPPED`) or |x| <= 2
    (`STE.FIXED`), and x >= 0 when unsigned. clipped (bool): |x| > q_m (unsigned: x > q_m).
    NaN is in neither. m: the clipped magnitude min(|x|, q_m) (unsigned: of max(x, 0)), new.
    """
    need_passband, need_clipped, need_m = needs
    bound = q if ste is STE.CLIPPED else torch.full_like(q, STE_FIXED_BOUND)
    if signed:
        a = xc.abs()  # |x|, becomes m in place
        passband = a <= bound if need_passband else None
        return passband, (a > q if need_clipped else None), (a.clamp_max_(q) if need_m else None)
    m = xc.clamp_min(0.0).clamp_max_(q) if need_m or (need_passband and ste is STE.CLIPPED) else None
    passband = None
    if need_passband:  # 0 <= x <= bound  <=>  min(max(x, 0), bound) == x  (-0 in, NaN out)
        passband = (m if ste is STE.CLIPPED else torch.minimum(xc.clamp_min(0.0), bound)) == xc
    return passband, (xc > q if need_clipped else None), m


def _times_sign(g: Tensor, xc: Tensor, signed: bool) -> Tensor:
    """g * s in the compute dtype (shape of x), s = sign(x) (unsigned: 1 where x > 0, else 0).

    The product keeps the memory layout the plain ``g * s`` would have (that of g), so that the
    sums of `_scalar_sums` add in the same order as the §1.3 formulas, bit for bit, even when g
    and x differ in layout (channels_last x, contiguous g); in place when they do not.
    """
    s = torch.sign(xc) if signed else (xc > 0).to(xc.dtype)
    if s.stride() == g.stride() and torch.promote_types(g.dtype, s.dtype) == s.dtype:
        return s.mul_(g)  # same layout, and g (half or compute dtype) widens exactly
    return g.to(s.dtype) * s


def _scalar_sums(
    gs: Tensor, m: Tensor, u: Tensor, clipped: Tensor | None, d: Tensor, needs: tuple[bool, ...]
) -> Sums:
    """The three sums, each term in the order of docs/method.md §1.3 (None where not needed).

    Scratch tensors are reused where their layout is the one the plain formula would give (the
    order of a sum follows the layout); m is overwritten by the last (so is u if u is m).
    """
    buf = torch.empty_like(gs)  # layout of gs
    step_sum = clipped_sum = exponent_sum = None
    if needs[0]:  # sum g * sign(x) * (round(u/d) - u/d)
        # round(u/d) - u/d in one buffer: u/d is recomputed by addcdiv (r + (-1) * (u/d), the
        # same division, an exact negation and the same subtraction) instead of being kept
        r = torch.div(u, d, out=buf).round_()
        step_sum = r.addcdiv_(u, d, value=-1.0).mul_(gs).sum()
    if clipped is not None and needs[1]:  # sum over |x| > q_m of g * sign(x)
        zero = torch.zeros((), dtype=gs.dtype, device=gs.device)
        out = buf if buf.stride() == clipped.stride() else None  # where() takes the layout of x
        clipped_sum = torch.where(clipped, gs, zero, out=out).sum()
    if needs[2]:  # sum g * sign(x) * u * ln(max(min(|x|, q_m), eps))
        gu = torch.mul(gs, u, out=buf)
        exponent_sum = gu.mul_(m.clamp_min_(LN_EPS).log_()).sum()
    return step_sum, clipped_sum, exponent_sum
