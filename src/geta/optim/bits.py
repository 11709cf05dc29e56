"""Mixed-precision bit allocation under a BOPs budget, from measured sensitivity (pure).

Each quantizer i adds rounding noise of variance step_i² / 12 to every element it quantizes,
with step_i = R_i / L_i(b) (R_i = q_m^t its range, L_i(b) = 2^(b-1) - 1 signed or 2^b - 1
unsigned grid levels). To second order the loss grows by ½ Σ_e F_e · step² / 12, where F_e is
the Fisher information of element e; geta estimates Σ_e F_e per quantizer as a running mean of
Σ (∂L/∂Q(x))² over training batches (`geta.optim.sensitivity`). So the cost of b bits is

    noise_i(b) = F_i · (R_i / L_i(b))²        (constants dropped: only ratios matter)

BOPs are Σ over multiplying ops l of MACs_l · b_w(l) · b_a(l), where b_w/b_a are the bits of
the op's weight/input quantizers (or the fixed float width of an unquantized operand).

`allocate_bits` minimises Σ noise_i(b_i) subject to BOPs ≤ budget and b_i in [lo_i, hi_i] by
greedy descent: start at every hi, then repeatedly take one bit from the quantizer whose
decrement costs the least noise per BOP saved, until the budget is met. Layers that matter
keep their bits; cheap-to-quantize layers (small F · R²) or costly ones (many MACs) give them up.

>>> import torch
>>> macs = torch.tensor([100.0, 100.0])                 # two layers, weights quantized only
>>> wq, aq = torch.tensor([0, 1]), torch.tensor([-1, -1])
>>> fixed = torch.tensor([32.0, 32.0])
>>> fisher, rng = torch.tensor([1.0, 100.0]), torch.ones(2)   # layer 1 is 100x more sensitive
>>> signed = torch.tensor([True, True])
>>> lo, hi = torch.full((2,), 2.0), torch.full((2,), 8.0)
>>> budget = float(100 * 32 * 4 + 100 * 32 * 6)          # 5 bits on average
>>> allocate_bits(fisher, rng, signed, lo, hi, macs, wq, aq, fixed, fixed, budget).tolist()
[4.0, 6.0]
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["allocate_bits", "bops_of", "levels", "quant_noise"]


def levels(bits: Tensor, signed: Tensor) -> Tensor:
    """Positive grid levels of a b-bit grid: 2^(b-1) - 1 signed, 2^b - 1 unsigned."""
    return torch.where(signed, 2.0 ** (bits - 1) - 1, 2.0**bits - 1)


def quant_noise(fisher: Tensor, rng: Tensor, bits: Tensor, signed: Tensor) -> Tensor:
    """F · (R / levels(b))²: the second-order loss cost of b-bit rounding, per quantizer."""
    return fisher * (rng / levels(bits, signed).clamp_min(1.0)) ** 2


def _operand_bits(bits: Tensor, index: Tensor, fixed: Tensor) -> Tensor:
    """Bits of each op's operand: its quantizer's, or the fixed float width where index < 0."""
    return torch.where(index >= 0, bits[index.clamp_min(0)], fixed)


def bops_of(bits: Tensor, macs: Tensor, wq: Tensor, aq: Tensor, fixed_w: Tensor, fixed_a: Tensor) -> Tensor:
    """Σ MACs · b_w · b_a over the ops (L,) for quantizer bits ``bits`` (n,); float64 scalar."""
    bw = _operand_bits(bits, wq, fixed_w)
    ba = _operand_bits(bits, aq, fixed_a)
    return (macs.double() * bw.double() * ba.double()).sum()


def allocate_bits(
    fisher: Tensor,
    rng: Tensor,
    signed: Tensor,
    lo: Tensor,
    hi: Tensor,
    macs: Tensor,
    wq: Tensor,
    aq: Tensor,
    fixed_w: Tensor,
    fixed_a: Tensor,
    budget: float,
) -> Tensor:
    """Integer bits per quantizer (n,) with BOPs ≤ ``budget`` (see the module docstring).

    Per quantizer (n,): ``fisher`` F_i >= 0, ``rng`` R_i > 0, ``signed``, bounds ``lo``/``hi``.
    Per op (L,): ``macs``, ``wq``/``aq`` the index of its weight/input quantizer or -1, and
    ``fixed_w``/``fixed_a`` the bits used where the index is -1. When even all-``lo`` bits
    exceed the budget, returns all-``lo`` (the caller decides whether that is an error).
    """
    bits = hi.double().clone()
    lo = lo.double()
    n = bits.numel()
    if n == 0:
        return bits
    f, r = fisher.double().clamp_min(0.0), rng.double()
    macs_d = macs.double()
    has_w, has_a = wq >= 0, aq >= 0
    total = float(bops_of(bits, macs, wq, aq, fixed_w, fixed_a))
    tiny = 1e-30 * max(float(quant_noise(f, r, lo, signed).max()), 1e-30)
    while total > budget:
        bw = _operand_bits(bits, wq, fixed_w.double()).double()
        ba = _operand_bits(bits, aq, fixed_a.double()).double()
        saved = torch.zeros(n, dtype=torch.float64)  # BOPs saved by one bit less, per quantizer
        saved.index_add_(0, wq[has_w], (macs_d * ba)[has_w])
        saved.index_add_(0, aq[has_a], (macs_d * bw)[has_a])
        cost = quant_noise(f, r, bits - 1, signed) - quant_noise(f, r, bits, signed)
        key = (cost + tiny) / saved.clamp_min(1e-300)
        key = torch.where((bits > lo) & (saved > 0), key, torch.full_like(key, float("inf")))
        i = int(torch.argmin(key))
        if not torch.isfinite(key[i]):
            break  # every quantizer is at its lower bound
        bits[i] -= 1
        total -= float(saved[i])
    return bits.to(hi.dtype)
