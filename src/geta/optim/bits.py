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

import math

import torch
from torch import Tensor

__all__ = ["allocate_bits", "allocate_bits_reference", "bops_of", "levels", "quant_noise"]


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

    The descent runs on Python floats and, after each decrement, recomputes only the terms
    that decrement changed (`_Greedy`), in the same order and IEEE double arithmetic as the
    tensor form (`allocate_bits_reference`, used for non-finite or fractional inputs): the
    result is the same to the bit, at a fraction of the cost (the allocation runs at every
    projection step of a single-period schedule).
    """
    n = hi.numel()
    if n == 0:
        return hi.double().clone()
    f = fisher.double().clamp_min(0.0)
    r, lo_d, hi_d = rng.double(), lo.double(), hi.double()
    finite = all(bool(torch.isfinite(t).all()) for t in (f, r, macs.double(), fixed_w, fixed_a))
    whole = bool((lo_d == lo_d.round()).all() and (hi_d == hi_d.round()).all())
    if not (finite and whole and math.isfinite(budget)):
        return allocate_bits_reference(fisher, rng, signed, lo, hi, macs, wq, aq, fixed_w, fixed_a, budget)
    total = float(bops_of(hi_d, macs, wq, aq, fixed_w, fixed_a))
    tiny = 1e-30 * max(float(quant_noise(f, r, lo_d, signed).max()), 1e-30)
    greedy = _Greedy(f, r, signed, lo_d, hi_d, macs, wq, aq, fixed_w, fixed_a, tiny)
    while total > budget:
        i = min(range(n), key=greedy.key.__getitem__)  # the first of the least keys, as argmin
        if not math.isfinite(greedy.key[i]):
            break  # every quantizer is at its lower bound
        total -= greedy.saved[i]
        greedy.decrement(i)
    return torch.tensor(greedy.bits, dtype=torch.float64).to(hi.dtype)


class _Greedy:
    """The state of `allocate_bits`' descent as Python floats (IEEE doubles, like float64).

    ``saved[j]``: BOPs saved by one bit less on quantizer j, summed over its ops in the order
    of ``index_add_`` (its weight roles in op order, then its input roles); ``key[j]``: noise
    added per BOP saved, inf where j cannot give a bit.
    """

    def __init__(self, f: Tensor, r: Tensor, signed: Tensor, lo: Tensor, hi: Tensor, macs: Tensor,
                 wq: Tensor, aq: Tensor, fixed_w: Tensor, fixed_a: Tensor, tiny: float) -> None:  # fmt: skip
        self.f, self.r, self.signed = f.tolist(), r.tolist(), signed.tolist()
        self.lo, self.bits, self.tiny = lo.tolist(), hi.tolist(), tiny
        self.macs, self.wq, self.aq = macs.double().tolist(), wq.tolist(), aq.tolist()
        self.fw, self.fa = fixed_w.double().tolist(), fixed_a.double().tolist()
        n = len(self.bits)
        self.w_ops: list[list[int]] = [[] for _ in range(n)]  # ops where j is the weight's
        self.a_ops: list[list[int]] = [[] for _ in range(n)]  # ops where j is the input's
        self.partners: list[set[int]] = [{j} for j in range(n)]  # whose key j's bits change
        for op, (w, a) in enumerate(zip(self.wq, self.aq, strict=True)):
            if w >= 0:
                self.w_ops[w].append(op)
            if a >= 0:
                self.a_ops[a].append(op)
            if w >= 0 and a >= 0:
                self.partners[w].add(a)
                self.partners[a].add(w)
        self.saved = [self._saved(j) for j in range(n)]
        self.key = [self._key(j) for j in range(n)]

    def _saved(self, j: int) -> float:
        s = 0.0
        for op in self.w_ops[j]:
            a = self.aq[op]
            s += self.macs[op] * (self.bits[a] if a >= 0 else self.fa[op])
        for op in self.a_ops[j]:
            w = self.wq[op]
            s += self.macs[op] * (self.bits[w] if w >= 0 else self.fw[op])
        return s

    def _noise(self, j: int, b: float) -> float:
        levels = 2.0 ** (b - 1) - 1 if self.signed[j] else 2.0**b - 1
        q = self.r[j] / max(levels, 1.0)
        return self.f[j] * (q * q)  # torch's x ** 2 is x * x

    def _key(self, j: int) -> float:
        b, saved = self.bits[j], self.saved[j]
        if not (b > self.lo[j] and saved > 0):
            return math.inf
        cost = self._noise(j, b - 1) - self._noise(j, b)
        return (cost + self.tiny) / max(saved, 1e-300)

    def decrement(self, i: int) -> None:
        """One bit less on quantizer i; refresh the terms that depend on its bits."""
        self.bits[i] -= 1
        for j in self.partners[i]:  # i itself too: an op may multiply i by i
            self.saved[j] = self._saved(j)
        for j in self.partners[i]:
            self.key[j] = self._key(j)


def allocate_bits_reference(
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
    """`allocate_bits` in tensor form: the slow, obvious statement of the greedy descent.

    Every step recomputes the BOPs saved and the noise added by one bit less on every quantizer
    and takes the least noise per BOP saved (``argmin``: the first on ties).
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
