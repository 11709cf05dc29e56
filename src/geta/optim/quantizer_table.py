"""`QuantizerTable`: every quantizer of a plan as vectors, for one-shot bit projection.

The table stacks the 0-dim scalars (step d, qmax q_m, exponent t) of all n quantizers into
vectors of shape (n,), computes the bounds of all of them with a handful of tensor ops
(`geta.optim.rules.step_bounds`), and writes the results back: the per-step cost is a few
vector ops plus one copy per quantizer, like ``torch.optim`` looping over its parameters.

Weight quantizers are bounded by ``Config.weight_bits``; activation (input) quantizers by
``Config.act_bits`` (docs/method.md defect 1: the authors' release never projected them), or by
``weight_bits`` when a plan carries input quantizers but the config names no activation range.
`QuantizerTable.domains` lists the valid range of qmax and the exponent, enforced after every
update in every stage (a learned exponent that reaches 0 would turn the fake-quant into NaN).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geta.optim import rules
from geta.optim.clipping import WEIGHT_FRACTIONS, mse_clip
from geta.optim.schedule import Schedule
from geta.plan import Plan, QuantTarget
from geta.quant.functional import MIN_QMAX, step_for_bits
from geta.quant.quantizer import LearnableQuantizer

__all__ = ["QuantizerTable"]


class QuantizerTable:
    """The quantizers of ``plan`` (in binding order, each once) and their bit ranges."""

    def __init__(self, plan: Plan) -> None:
        cfg = plan.config
        act = cfg.act_bits if cfg.act_bits is not None else cfg.weight_bits
        seen: dict[int, int] = {}
        quantizers: list[LearnableQuantizer] = []
        is_act: list[bool] = []
        names: list[str] = []
        for b in plan.bindings:
            if id(b.quantizer) not in seen:
                seen[id(b.quantizer)] = len(quantizers)
                quantizers.append(b.quantizer)
                is_act.append(b.target is QuantTarget.INPUT)
                names.append(b.name)
        self.quantizers = quantizers
        self.names = names
        self.init_bits = cfg.init_bits
        self.ranges = (cfg.weight_bits, act)
        self._index = seen
        self._tensor_quant = {
            id(b.tensor): seen[id(b.quantizer)] for b in plan.bindings if b.tensor is not None
        }
        self.weights: dict[int, Tensor] = {}  # quantizer index -> the weight it quantizes
        for b in plan.bindings:
            if b.tensor is not None:
                self.weights.setdefault(seen[id(b.quantizer)], b.tensor)
        device = quantizers[0].step.device if quantizers else torch.device("cpu")
        self.is_act = torch.tensor(is_act, dtype=torch.bool, device=device)  # (n,)
        self.signed = torch.tensor([q.signed for q in quantizers], dtype=torch.bool, device=device)
        lo = [act[0] if a else cfg.weight_bits[0] for a in is_act]
        hi = [act[1] if a else cfg.weight_bits[1] for a in is_act]
        self.b_lo = torch.tensor(lo, dtype=torch.float32, device=device)  # (n,) final lower bound
        self.b_final = torch.tensor(hi, dtype=torch.float32, device=device)  # (n,) final upper bound
        # the scalars as lists of parameters (stacked in one op per step, never one by one)
        self._step = [q.step for q in quantizers]
        self._qmax = [q.qmax for q in quantizers]
        self._exponent = [q.exponent for q in quantizers]
        # `upper`'s last answer: (final, its distinct values, their bounds, the bounds per quantizer)
        self._upper: tuple[Tensor, tuple[float, ...], tuple[float, ...], Tensor] | None = None

    def index_of_quantizer(self, quantizer: LearnableQuantizer | None) -> int:
        """Position of ``quantizer`` (by identity) in the table, -1 if None or not in it."""
        return -1 if quantizer is None else self._index.get(id(quantizer), -1)

    def ranges_of(self) -> tuple[Tensor, Tensor]:
        """q_m^t of every quantizer (its grid's range R), (n,), and whether it is signed."""
        _, qmax, exponent = self.scalars()
        return qmax**exponent, self.signed

    def __len__(self) -> int:
        return len(self.quantizers)

    def index_of_tensor(self, tensor: Tensor) -> int:
        """Index of the weight quantizer bound to ``tensor`` (by identity), -1 if none."""
        return self._tensor_quant.get(id(tensor), -1)

    def parameters(self) -> list[Tensor]:
        """The distinct learnable scalars of all quantizers (the optimizer's quant group)."""
        seen: dict[int, Tensor] = {}
        for q in self.quantizers:
            for p in q.parameters():
                seen.setdefault(id(p), p)
        return list(seen.values())

    def domains(self) -> dict[int, tuple[float, float]]:
        """id(param) -> (min, max) for the scalars that must stay in a valid domain.

        qmax (q_m) stays positive and the exponent (t) inside `rules.EXPONENT_RANGE`: gradient
        steps can drive t to 0 and below, where min(|x|, q_m)**t is inf at x = 0.
        """
        out: dict[int, tuple[float, float]] = {}
        for q in self.quantizers:
            out[id(q.qmax)] = (MIN_QMAX, math.inf)
            out[id(q.exponent)] = rules.EXPONENT_RANGE
        return out

    @torch.no_grad()
    def scalars(self) -> tuple[Tensor, Tensor, Tensor]:
        """(step, qmax, exponent) of every quantizer, each (n,), detached copies."""
        return torch.stack(self._step), torch.stack(self._qmax), torch.stack(self._exponent)

    def upper(self, schedule: Schedule, step: int, final: Tensor | None = None) -> Tensor:
        """The upper bit bound b_hi in force at ``step`` for every quantizer, (n,).

        It descends from the initial bits to ``final`` (n,) (default: the range's upper ends)
        over the projection periods (`Schedule.bit_upper_at`, per distinct final value).
        """
        final = self.b_final if final is None else final
        cached = self._upper  # the same ``final`` object: its distinct values are known
        fresh = cached is None or cached[0] is not final
        values = tuple(torch.unique(final).tolist()) if fresh else cached[1]
        bounds = tuple(
            float(schedule.bit_upper_at(step, init_bits=self.init_bits, final_bits=int(v))) for v in values
        )
        if cached is None or fresh or cached[2] != bounds:
            out = torch.empty_like(final)
            for value, b in zip(values, bounds, strict=True):
                out[final == value] = b
            cached = self._upper = (final, values, bounds, out)
        return cached[3].clone()

    @torch.no_grad()
    def bounds(self, b_hi: Tensor, qmax: Tensor, exponent: Tensor) -> tuple[Tensor, Tensor]:
        """(step_min, step_max) of every quantizer for upper bounds ``b_hi`` (n,)."""
        return rules.step_bounds(qmax, exponent, self.b_lo, b_hi, self.signed)

    @torch.no_grad()
    def write_steps(self, steps: Tensor) -> None:
        """Copy ``steps`` (n,) into the quantizers' ``step`` parameters.

        On the CPU, with ``steps`` in the parameters' dtype, through Python floats and ``fill_``
        (exact: a float32 or float64 value round-trips through a double), half the cost of a
        ``copy_`` per 0-dim view.
        """
        if steps.device.type == "cpu" and all(p.dtype == steps.dtype and p.is_cpu for p in self._step):
            for p, value in zip(self._step, steps.tolist(), strict=True):
                p.fill_(value)
            return
        for p, v in zip(self._step, steps.unbind(), strict=True):
            p.copy_(v)

    @torch.no_grad()
    def project_(self, b_hi: Tensor) -> None:
        """Project every ``step`` onto its bit interval [b_lo, b_hi] (§3.2)."""
        if not self.quantizers:
            return
        step, qmax, exponent = self.scalars()
        lo, hi = self.bounds(b_hi, qmax, exponent)
        self.write_steps(torch.minimum(torch.maximum(step, lo), hi))

    @torch.no_grad()
    def fit_weight_ranges_(self, bits: Tensor, which: Tensor) -> None:
        """Set q_m of the weight quantizers in ``which`` (n,) bool to the clipping that minimises
        ‖Q(W) - W‖² on a ``bits`` (n,) grid, among `WEIGHT_FRACTIONS` of max|W|
        (`geta.optim.clipping.mse_clip`).

        Clipping at max|W| wastes a low-bit grid on a few outliers (at 2 bits most weights
        would round to zero); when the bit rule lowers a layer's bits its clipping follows,
        then learns on by gradient.
        """
        for i, w in self.weights.items():
            if not bool(which[i]) or w.device.type == "meta":
                continue
            q = self.quantizers[i]
            q.qmax.copy_(mse_clip(w, bits[i], q, WEIGHT_FRACTIONS))

    @torch.no_grad()
    def freeze(self) -> Tensor:
        """The integer bits to freeze for the cool-down: round(bits) in the final range, (n,)."""
        step, qmax, exponent = self.scalars()
        return rules.frozen_bits(step, qmax, exponent, self.b_lo, self.b_final, self.signed)

    @torch.no_grad()
    def reset_to_(self, frozen: Tensor) -> None:
        """Set every ``step`` to step_for_bits(frozen bits) of the current qmax and exponent."""
        if not self.quantizers:
            return
        qmax, exponent = torch.stack(self._qmax), torch.stack(self._exponent)
        signed = step_for_bits(frozen, qmax, exponent, signed=True)
        unsigned = step_for_bits(frozen, qmax, exponent, signed=False)
        self.write_steps(torch.where(self.signed, signed, unsigned))  # `bounds`' step_min at b_hi = frozen
