"""Widths and bits chosen together under one BOPs budget (pure; docs/method.md §3.6).

With a budget and no fixed sparsity, QASSO decides how many units every prune group loses and
how many bits every quantizer keeps in one allocation. Both kinds of move have a predicted loss
increase (second order, from sensitivities measured in training) and a BOPs saving:

- **one bit less** on quantizer i adds rounding noise of variance step²/12 to every element,
  step = R_i / levels(b): ΔL = ½ F_i (step(b-1)² - step(b)²) / 12 (`BIT_LOSS` · the
  `geta.optim.bits.quant_noise` difference), and saves MACs · b_partner on each op the quantizer feeds;
- **removing units** of a group (the cheapest ones first) costs the sum of their unit costs
  c_j = ½ E[<x_j, g_j>²] (the empirical-Fisher quadratic form of the perturbation -x_j,
  `geta.optim.sensitivity.UnitCosts`) and shrinks the MACs of every op whose weight holds the
  group's rows along dim 0 or 1: MACs_l = dense_l · kept_l0 · kept_l1, kept = 1 - removed / extent.

The same 1/batch factor sits in both measures (batch-mean gradients), so they compare directly.
`allocate_joint` starts from every quantizer at its upper bound and nothing removed, first
removes the cheapest units (loss per unit) until at least ``min_removed`` are gone, then takes
the move with the least loss per BOP saved until the budget is met. Groups of one kind (the
same group of every layer, ``Config.uniform_layers``) move together; a group never goes below
its floor and its removals come in multiples of ``divisible`` (first the remainder), coarsened
to at most `MAX_MOVES` moves per group. `geta.optim.widths_reference.allocate_joint_reference`
states the same descent slowly and obviously (the tests hold the two equal).

>>> import torch
>>> q = QuantTerms(fisher=torch.tensor([1.0]), rng=torch.ones(1), signed=torch.tensor([True]),
...                lo=torch.tensor([2.0]), hi=torch.tensor([8.0]), wq=torch.tensor([0, -1]),
...                aq=torch.tensor([-1, -1]), fixed_w=torch.full((2,), 32.0), fixed_a=torch.full((2,), 32.0))
>>> # two linear ops; group 0 is op 0's 4 output rows and op 1's 4 input columns
>>> p = PruneTerms(macs=torch.tensor([16.0, 16.0]), extent=torch.tensor([[4.0, 4.0], [4.0, 4.0]]),
...                touches=((0, 0, 0, 1.0), (1, 1, 0, 1.0)), costs=(torch.tensor([0.0, 0.0, 5.0, 5.0]),),
...                floors=torch.tensor([1]), kinds=torch.tensor([0]), divisible=1)
>>> bits, removed = allocate_joint(q, p, budget=16 * 8 * 32 / 4 + 16 * 32 * 32 / 2, min_removed=0)
>>> removed.tolist(), bits.tolist()     # the two free units go, then bits pay for the rest
([2], [4.0])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "BIT_LOSS",
    "MAX_MOVES",
    "PruneTerms",
    "QuantTerms",
    "allocate_joint",
    "removable",
]

BIT_LOSS = 1.0 / 24.0
"""ΔL of rounding noise per unit of `geta.optim.bits.quant_noise` (F · step²): ½ for the second
order, 1/12 for the variance of uniform rounding error."""

MAX_MOVES = 64
"""At most this many removal moves per group (a group of 3072 units moves 48 at a time)."""


@dataclass(frozen=True)
class QuantTerms:
    """Per quantizer (n,): ``fisher`` F_i, ``rng`` R_i, ``signed``, bounds ``lo``/``hi``; per op
    (L,): ``wq``/``aq`` its weight/input quantizer or -1 and ``fixed_w``/``fixed_a`` the bits of
    an operand without one (`geta.optim.bits`)."""

    fisher: Tensor
    rng: Tensor
    signed: Tensor
    lo: Tensor
    hi: Tensor
    wq: Tensor
    aq: Tensor
    fixed_w: Tensor
    fixed_a: Tensor


@dataclass(frozen=True)
class PruneTerms:
    """What pruning changes. Per op (L,): ``macs`` before pruning, ``extent`` (L, 2) positions of
    its weight along dims 0 and 1 (1 without a weight). ``touches``: (op, dim, group, width) —
    each unit of ``group`` owns ``width`` positions of the op's weight along ``dim``. Per group
    (G,): ``costs`` a loss increase per unit (size,), ``floors`` units kept at least, ``kinds``
    groups that move together (equal sizes and floors); ``divisible`` the removal granule;
    ``skew``: no group's removed fraction may pass the whole model's by more than this (None:
    no limit)."""

    macs: Tensor
    extent: Tensor
    touches: tuple[tuple[int, int, int, float], ...]
    costs: tuple[Tensor, ...]
    floors: Tensor
    kinds: Tensor
    divisible: int
    skew: float | None = None


def _increments(size: int, floor: int, divisible: int) -> list[int]:
    """Removal moves of one group: the remainder to a multiple of ``divisible``, then equal
    chunks (multiples of it, at most `MAX_MOVES` of them), then what is left."""
    room = size - floor
    if room <= 0:
        return []
    first = min(size % divisible, room)
    moves = [first] if first else []
    whole = (room - first) // divisible  # granules that may go
    per = max(1, math.ceil(whole / MAX_MOVES))
    moves += [per * divisible] * (whole // per)
    if whole % per:
        moves.append(whole % per * divisible)
    return moves


def removable(sizes: Tensor, floors: Tensor, divisible: int) -> Tensor:
    """The most units every group can lose (G,) int64: all its removal moves."""
    moves = [sum(_increments(int(n), int(f), divisible)) for n, f in zip(sizes, floors, strict=True)]
    return torch.tensor(moves, dtype=torch.long)


def _kind_members(kinds: Tensor) -> list[list[int]]:
    members: dict[int, list[int]] = {}
    for g, k in enumerate(kinds.tolist()):
        members.setdefault(int(k), []).append(g)
    return list(members.values())


class _Problem:
    """The shared, precomputed structure of one allocation (both implementations read it)."""

    def __init__(self, q: QuantTerms, p: PruneTerms) -> None:
        self.members = _kind_members(p.kinds)
        sizes = [int(c.numel()) for c in p.costs]
        for group in self.members:
            if len({(sizes[g], int(p.floors[g])) for g in group}) > 1:
                raise ValueError(f"allocate_joint: groups {group} share a kind but not their size and floor")
        self.moves = [_increments(sizes[m[0]], int(p.floors[m[0]]), p.divisible) for m in self.members]
        self.cum: list[list[float]] = []  # per group: loss of removing its r cheapest units
        for c in p.costs:
            ordered = torch.sort(c.double().clamp_min(0.0)).values
            self.cum.append([0.0, *torch.cumsum(ordered, 0).tolist()])
        self.sizes, self.units, self.skew = sizes, sum(sizes), p.skew
        self.noise_scale = BIT_LOSS
        self.macs, self.extent = p.macs.double(), p.extent.double()
        self.num_groups = len(p.costs)

    def allowed(self, k: int, r: list[int], step: int) -> bool:
        """Whether removing ``step`` more units of every group of kind k keeps its removed
        fraction within ``skew`` of the model's (after the move)."""
        if self.skew is None:
            return True
        g = self.members[k][0]
        total = sum(r) + step * len(self.members[k])
        return (r[g] + step) / self.sizes[g] <= total / max(self.units, 1) + self.skew + 1e-12

    def removal_loss(self, k: int, r: list[int], step: int) -> float:
        return sum(self.cum[g][r[g] + step] - self.cum[g][r[g]] for g in self.members[k])


def allocate_joint(
    q: QuantTerms, p: PruneTerms, *, budget: float, min_removed: int = 0
) -> tuple[Tensor, Tensor]:
    """(bits (n,), removed units per group (G,) int64) under ``budget`` BOPs (module docstring).

    When even every quantizer at ``lo`` and every group at its floor exceeds the budget, returns
    that cheapest point (the caller decides whether it is an error).
    """
    return _Greedy(q, p).run(budget, min_removed)


class _Greedy:
    """`allocate_joint`'s descent on Python floats, refreshing only the terms a move changes."""

    def __init__(self, q: QuantTerms, p: PruneTerms) -> None:
        self.pb = _Problem(q, p)
        self.f, self.r_q = q.fisher.double().clamp_min(0.0).tolist(), q.rng.double().tolist()
        self.signed, self.lo = q.signed.tolist(), q.lo.double().tolist()
        self.bits = q.hi.double().tolist()
        self.wq, self.aq = q.wq.tolist(), q.aq.tolist()
        self.fw, self.fa = q.fixed_w.double().tolist(), q.fixed_a.double().tolist()
        n, n_ops = len(self.bits), len(self.wq)
        self.dense, self.ext = self.pb.macs.tolist(), self.pb.extent.tolist()
        self.touch: list[list[tuple[int, int, float]]] = [[] for _ in range(n_ops)]  # op -> (dim, g, w)
        self.kind_ops: list[set[int]] = [set() for _ in self.pb.members]
        kind_of = {g: k for k, m in enumerate(self.pb.members) for g in m}
        for op, dim, g, w in p.touches:
            self.touch[op].append((dim, g, float(w)))
            self.kind_ops[kind_of[g]].add(op)
        self.q_ops: list[set[int]] = [set() for _ in range(n)]
        for op, (w, a) in enumerate(zip(self.wq, self.aq, strict=True)):
            for j in (w, a):
                if j >= 0:
                    self.q_ops[j].add(op)
        self.op_kinds: list[set[int]] = [set() for _ in range(n_ops)]
        for k, ops in enumerate(self.kind_ops):
            for op in ops:
                self.op_kinds[op].add(k)
        self.removed = [0] * self.pb.num_groups
        self.taken = [0] * len(self.pb.members)  # moves made per kind
        self.cur = [self._macs(op) for op in range(n_ops)]
        self.tiny = 1e-30
        self.keys: list[float] = []  # per move (quantizers, then kinds): ΔL per BOP saved
        self.capped: set[int] = set()  # kinds whose next move the skew limit holds back

    # -- the cost model ---------------------------------------------------------------------
    def _macs(self, op: int, extra: dict[int, int] | None = None) -> float:
        """MACs of ``op`` with the groups' current removals (plus ``extra`` units per group)."""
        gone = [0.0, 0.0]
        for dim, g, w in self.touch[op]:
            gone[dim] += (self.removed[g] + (extra.get(g, 0) if extra else 0)) * w
        k0 = max(0.0, 1.0 - gone[0] / max(self.ext[op][0], 1.0))
        k1 = max(0.0, 1.0 - gone[1] / max(self.ext[op][1], 1.0))
        return self.dense[op] * k0 * k1

    def _operands(self, op: int) -> tuple[float, float]:
        w, a = self.wq[op], self.aq[op]
        return (self.bits[w] if w >= 0 else self.fw[op]), (self.bits[a] if a >= 0 else self.fa[op])

    def _bit_saved(self, j: int) -> float:
        s = 0.0
        for op in sorted(self.q_ops[j]):
            bw, ba = self._operands(op)
            s += self.cur[op] * ((ba if self.wq[op] == j else 0.0) + (bw if self.aq[op] == j else 0.0))
        return s

    def _noise(self, j: int, b: float) -> float:
        levels = 2.0 ** (b - 1) - 1 if self.signed[j] else 2.0**b - 1
        step = self.r_q[j] / max(levels, 1.0)
        return self.f[j] * (step * step) * self.pb.noise_scale

    def _next(self, k: int) -> int:
        moves = self.pb.moves[k]
        return moves[self.taken[k]] if self.taken[k] < len(moves) else 0

    def _bit_key(self, j: int) -> float:
        b, saved = self.bits[j], self._bit_saved(j)
        if not (b > self.lo[j] and saved > 0):
            return math.inf
        return (self._noise(j, b - 1) - self._noise(j, b) + self.tiny) / saved

    def _prune_key(self, k: int) -> float:
        step = self._next(k)
        self.capped.discard(k)
        if not step:
            return math.inf
        if not self.pb.allowed(k, self.removed, step):
            self.capped.add(k)  # revisited after every removal: the model's fraction grows
            return math.inf
        extra = dict.fromkeys(self.pb.members[k], step)
        saved = 0.0
        for op in sorted(self.kind_ops[k]):
            bw, ba = self._operands(op)
            saved += (self.cur[op] - self._macs(op, extra)) * bw * ba
        if not saved > 0:
            return math.inf
        return (self.pb.removal_loss(k, self.removed, step) + self.tiny) / saved

    # -- the descent ------------------------------------------------------------------------
    def _refresh(self, ops: set[int]) -> None:
        """Recompute the keys of every move whose terms involve ``ops``."""
        quantizers = {j for op in ops for j in (self.wq[op], self.aq[op]) if j >= 0}
        for j in quantizers:
            self.keys[j] = self._bit_key(j)
        n = len(self.bits)
        for k in {k for op in ops for k in self.op_kinds[op]}:
            self.keys[n + k] = self._prune_key(k)

    def _remove(self, k: int) -> None:
        step = self._next(k)
        for g in self.pb.members[k]:
            self.removed[g] += step
        self.taken[k] += 1
        for op in self.kind_ops[k]:
            self.cur[op] = self._macs(op)
        self._refresh(self.kind_ops[k])
        self.keys[len(self.bits) + k] = self._prune_key(k)  # (its next move, even without ops)
        for other in list(self.capped):
            self.keys[len(self.bits) + other] = self._prune_key(other)

    def _lower(self, j: int) -> None:
        self.bits[j] -= 1
        self._refresh(self.q_ops[j])
        self.keys[j] = self._bit_key(j)

    def total(self) -> float:
        return sum(c * bw * ba for c, (bw, ba) in zip(self.cur, map(self._operands, range(len(self.cur)))))

    def run(self, budget: float, min_removed: int) -> tuple[Tensor, Tensor]:
        n = len(self.bits)
        self.keys = [self._bit_key(j) for j in range(n)] + [
            self._prune_key(k) for k in range(len(self.pb.members))
        ]
        while sum(self.removed) < min_removed:  # 1) the least loss per unit, up to the minimum
            best, best_key = -1, math.inf
            for k in range(len(self.pb.members)):
                step = self._next(k)
                if step and self.pb.allowed(k, self.removed, step):
                    key = self.pb.removal_loss(k, self.removed, step) / (step * len(self.pb.members[k]))
                    if key < best_key:
                        best, best_key = k, key
            if best < 0:
                break
            self._remove(best)
        while self.total() > budget:  # 2) the least loss per BOP saved, until the budget holds
            i = min(range(len(self.keys)), key=self.keys.__getitem__)
            if not math.isfinite(self.keys[i]):
                break  # nothing left to give
            if i < n:
                self._lower(i)
            else:
                self._remove(i - n)
        return torch.tensor(self.bits, dtype=torch.float64), torch.tensor(self.removed, dtype=torch.long)
