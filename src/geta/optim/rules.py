"""Pure update rules of QASSO (docs/method.md §3.2-§3.4): bit projection, forget rate, step choice.

Every function here is a pure tensor function over *vectors*: one entry per quantizer, per
redundant unit, or per (unit, layer) block. The optimizer gathers the statistics with a few
segment sums and calls these once per step, so nothing loops in Python over groups or units.

The quantization-aware forgetting step on the redundant rows x_R of a unit, with ∇ their
base-direction rows and α the learning rate, is

    x_R <- x_R - α ∇ - γ (c + Σ_l d_l r_l)          (c + d r = Q(x) for a quantized layer)

where c is the clipped value, r the rounding residual (`forget_parts`), γ the forget rate
(`forget_rate`, `linear_forget_rate`) and d_l the quantization step of layer l
(`forget_steps`, `layer_steps`). r is taken at the quantizer's step before the update, as in
the paper's analysis, so that the descent bound below holds exactly for the applied update:

    <∇, update> <= -min(1 - ζη, η(1 - ζ)) α ‖∇‖²  < 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geta.quant.functional import MIN_STEP, bits, step_for_bits

__all__ = [
    "ETA",
    "EXPONENT_RANGE",
    "SHRINK",
    "ZERO_NORM",
    "ZETA",
    "descent_margin",
    "forget_parts",
    "forget_rate",
    "forget_steps",
    "frozen_bits",
    "layer_steps",
    "linear_forget_rate",
    "period_quotas",
    "step_bounds",
]

ETA = 0.999  # η: share of α‖∇‖² the forgetting may spend against descent, via 1 - η
ZETA = 0.9  # ζ: share of the remaining budget the quantization term may spend
SHRINK = 0.8  # γ <- 0.8 γ (and d <- d / 0.8) while a step falls below the b_hi bound
ZERO_NORM = 1e-12  # ‖c‖ at or below this: the unit is already zero, γ = 0 (defect 2: a norm)
EXPONENT_RANGE = (0.5, 2.0)  # t is kept here: t -> 0 maps every weight to ±1, t <= 0 gives 0**t = inf


def descent_margin(eta: float = ETA, zeta: float = ZETA) -> float:
    """The guaranteed descent factor min(1 - ζη, η(1 - ζ)) of the forgetting step."""
    return min(1.0 - zeta * eta, eta * (1.0 - zeta))


# ---------------------------------------------------------------------------------------------
# Bit intervals (§1.2, §3.2): one entry per quantizer
# ---------------------------------------------------------------------------------------------


def step_bounds(
    qmax: Tensor, exponent: Tensor, b_lo: Tensor, b_hi: Tensor, signed: Tensor
) -> tuple[Tensor, Tensor]:
    """(step_min, step_max) = (step_for_bits(b_hi), step_for_bits(b_lo)) per quantizer.

    All arguments are vectors of shape (n,); ``signed`` is bool. A step inside the interval is
    a bit width inside [b_lo, b_hi] for the given qmax (q_m) and exponent (t).
    """
    lo_s = step_for_bits(b_hi, qmax, exponent, signed=True)
    lo_u = step_for_bits(b_hi, qmax, exponent, signed=False)
    hi_s = step_for_bits(b_lo, qmax, exponent, signed=True)
    hi_u = step_for_bits(b_lo, qmax, exponent, signed=False)
    return torch.where(signed, lo_s, lo_u), torch.where(signed, hi_s, hi_u)


def frozen_bits(
    step: Tensor, qmax: Tensor, exponent: Tensor, b_lo: Tensor, b_hi: Tensor, signed: Tensor
) -> Tensor:
    """The integer bit width each quantizer is frozen at for the cool-down (§3.2).

    round(bits) clamped into [b_lo, b_hi]; vectors of shape (n,), returned as float.
    """
    b = torch.where(signed, bits(step, qmax, exponent, signed=True), bits(step, qmax, exponent, signed=False))
    return torch.minimum(torch.maximum(torch.round(b), b_lo), b_hi)


def period_quotas(total: int, periods: int) -> list[int]:
    """``total`` units split evenly over ``periods``, the remainder in the last period.

    >>> period_quotas(10, 3)
    [3, 3, 4]
    """
    if periods < 1 or total < 0:
        raise ValueError(f"period_quotas: need total >= 0 and periods >= 1, got {total}, {periods}")
    base = total // periods
    return [base] * (periods - 1) + [total - base * (periods - 1)]


# ---------------------------------------------------------------------------------------------
# The forgetting step (§3.4)
# ---------------------------------------------------------------------------------------------


def forget_parts(
    w: Tensor, step: Tensor, qmax: Tensor, exponent: Tensor, *, signed: bool = True
) -> tuple[Tensor, Tensor]:
    """(c, r) of a quantized weight: Q(w) = c + step * r, element-wise (shape of ``w``).

    c = sign(w) * min(|w|, qmax)**exponent (the clipped value) and
    r = sign(w) * (round(u/step) - u/step) (the rounding residual), u = min(|w|, qmax)**exponent.
    Unsigned grids clamp w to [0, qmax] first, as the quantizer does.
    """
    d = step.clamp_min(MIN_STEP)
    if signed:
        s, m = torch.sign(w), torch.minimum(w.abs(), qmax)
    else:
        s, m = (w > 0).to(w.dtype), torch.minimum(w.clamp_min(0.0), qmax)
    u = m**exponent  # u(w)
    v = u / d  # position on the grid before rounding
    return s * u, s * (torch.round(v) - v)


def linear_forget_rate(c_sq: Tensor, *, period_len: int, t: int) -> Tensor:
    """The linear forget rate γ = 1/(T - t) per redundant unit (0 if ‖c‖ ≈ 0, already zero).

    ``c_sq`` (n,) holds ‖c‖². Every row shrinks to 1/T of its norm by the period's last step
    (Π (1 - 1/(T - t)) telescopes), so the commit barely changes the function (docs/method.md §3.5).
    """
    if not 0 <= t < period_len:
        raise ValueError(f"linear_forget_rate: t={t} must be in [0, period_len={period_len})")
    scheduled = torch.full_like(c_sq, 1.0 / (period_len - t))
    return torch.where(c_sq.sqrt() <= ZERO_NORM, torch.zeros_like(scheduled), scheduled)


def forget_rate(
    grad_sq: Tensor,
    c_sq: Tensor,
    c_dot: Tensor,
    *,
    lr: float,
    period_len: int,
    t: int,
    eta: float = ETA,
) -> Tensor:
    """The paper's descent-safe forget rate γ per redundant unit; inputs are vectors (n,) of
    ‖∇‖², ‖c‖², <c, ∇>.

    - ‖c‖ ≈ 0 (already zero): γ = 0;
    - <c, ∇> >= 0 (forgetting helps descent): γ = 1 / (T - t), T the period length, t the index;
    - <c, ∇> < 0: γ = -(1 - η) α ‖∇‖² / <c, ∇>, i.e. -(1-η)α‖∇‖ / (cos(c,∇)‖c‖) written without
      the cosine, so no clamping of cos is needed. geta caps it at 1 / (T - t): the paper's value
      can explode when cos ≈ 0⁻, and a smaller γ only reduces the harm to descent.

    On a trained model it leaves 54-104 % of a row's norm and the commit is a hard cut
    (docs/method.md §3.5); `linear_forget_rate` is geta's default.
    """
    if not 0 <= t < period_len:
        raise ValueError(f"forget_rate: t={t} must be in [0, period_len={period_len})")
    scheduled = torch.full_like(grad_sq, 1.0 / (period_len - t))
    safe_dot = torch.where(c_dot < 0, c_dot, torch.full_like(c_dot, -1.0))
    against = torch.minimum(-(1.0 - eta) * lr * grad_sq / safe_dot, scheduled)
    gamma = torch.where(c_dot >= 0, scheduled, against)
    return torch.where(c_sq.sqrt() <= ZERO_NORM, torch.zeros_like(gamma), gamma)


def forget_steps(
    gamma: Tensor,
    grad_sq: Tensor,
    block_unit: Tensor,
    block_rdot: Tensor,
    step_min: Tensor,
    step_max: Tensor,
    *,
    lr: float,
    eta: float = ETA,
    zeta: float = ZETA,
) -> tuple[Tensor, Tensor]:
    """The per-layer step rule of §3.4 (defect 3): returns (γ, step per block).

    A *block* is one (unit, quantized layer) pair: ``block_unit`` (n_blocks,) int64 names the
    unit, ``block_rdot`` is <∇_l, r_l> over the block's rows, ``step_min``/``step_max`` are the
    layer's step at b_hi / b_lo. ``gamma`` and ``grad_sq`` (‖∇‖²) are per unit (n_units,).

    Blocks with <∇_l, r_l> >= 0 help descent: they take the coarsest step, ``step_max``. The
    others share the budget ζηα‖∇‖² equally: d_l = -ζηα‖∇‖² w_l / (γ <∇_l, r_l>). While any
    d_l < step_min, γ <- 0.8 γ and d_l <- d_l / 0.8 (closed form: the smallest such power per
    unit); finally d_l is capped at ``step_max``. γ = 0 blocks take ``step_max``.
    """
    n_units = gamma.shape[0]
    g_b = gamma[block_unit]  # γ of each block's unit, (n_blocks,)
    neg = (block_rdot < 0) & (g_b > 0)
    n_neg = torch.zeros(n_units, dtype=gamma.dtype, device=gamma.device)
    n_neg.index_add_(0, block_unit, neg.to(gamma.dtype))
    budget = zeta * eta * lr * grad_sq[block_unit] / n_neg[block_unit].clamp_min(1.0)
    safe = torch.where(neg, -block_rdot * g_b, torch.ones_like(g_b))
    raw = torch.where(neg, budget / safe, step_max)  # d_l before any shrinking of γ
    # smallest k >= 0 with raw / 0.8**k >= step_min, per block, then the max over each unit
    ratio = (step_min / raw.clamp_min(MIN_STEP)).clamp_min(1.0)
    k = torch.ceil(torch.log(ratio) / math.log(1.0 / SHRINK))
    k = torch.where(raw / SHRINK**k < step_min, k + 1, k)  # guard the float log
    k = torch.where(neg, k, torch.zeros_like(k))
    k_unit = torch.zeros(n_units, dtype=gamma.dtype, device=gamma.device)
    k_unit.scatter_reduce_(0, block_unit, k, reduce="amax", include_self=True)
    scale = SHRINK**k_unit  # (n_units,)
    step = torch.where(neg, raw / scale[block_unit], step_max)
    step = torch.maximum(torch.minimum(step, step_max), step_min)  # cap at b_lo; float guard
    return gamma * scale, step


def layer_steps(block_layer: Tensor, block_step: Tensor, current: Tensor) -> Tensor:
    """One step per quantized layer: the finest step any of its blocks asks for.

    ``current`` (n_layers,) is kept for layers without blocks. Taking the minimum keeps every
    unit's descent bound: a smaller step only shrinks the quantization term's harm (blocks with
    <∇_l, r_l> < 0) or keeps its sign (blocks with <∇_l, r_l> >= 0).
    """
    out = torch.full_like(current, math.inf)
    out.scatter_reduce_(0, block_layer, block_step, reduce="amin", include_self=True)
    return torch.where(torch.isinf(out), current, out)
