"""`ForgetStep`: one joint-stage forgetting step on the redundant rows R (docs/method.md §3.4).

A step of the joint stage runs in three phases around the ordinary update:

1. ``ForgetStep(...)`` (before any parameter moves): with the paper's step rule, records every
   quantizer's current scalars and bit interval for the current qmax and exponent;
2. `ForgetStep.record` (while the optimizer walks its parameters, just before a tensor moves):
   keeps the elements of R in that tensor, x_R, and of its base direction ∇;
3. `ForgetStep.apply` (after the ordinary update x <- x - α∇ of every row): splits quantized
   elements into the clipped value c and the rounding residual r at the quantizer's step from
   before the update, statistics per unit and per (unit, layer) block, the pure rules of
   `geta.optim.rules` for γ and the per-layer steps, the new step of each touched quantizer,
   and finally x_R <- x_R - γ (c + d_l r).

R is read through its flat view (`geta.optim.units.flat_rows`, built once per pruning period):
one gather per tensor for x and ∇, one ``index_add_`` per tensor for the update, and the sums over
all tensors of a device and dtype in one ``index_add_`` -- no Python loop over slices, units or
rows, and no host sync.

Without ``b_hi`` (the default bit rule of geta, ``"budget"``, `geta.optim.strategies`) the
quantizers' steps belong to the bit allocation: the forgetting shrinks the raw rows,
x_R <- x_R - α∇ - γ x_R, and never writes a step (the paper's rule would overwrite what the bits
learned, pinning every touched layer at b_lo — docs/method.md §3.5).

An element shared by two selected units (a weight's row in one group and its column in
another) belongs to one of them only (`geta.optim.units`: its first slice owns it), so the
units' element sets are disjoint: each unit's statistics and update cover exactly the elements
it owns, and the descent bound of `geta.optim.rules` holds for every unit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from geta.optim import rules
from geta.optim.quantizer_table import QuantizerTable
from geta.optim.sharding import local_data
from geta.optim.strategies import ForgetStrategy
from geta.optim.units import FlatBucket, RedundantRows

__all__ = ["ForgetStep"]

_Prepared = tuple[FlatBucket, Tensor, Tensor | None, Tensor | None]  # (bucket, c, ∇, r) per bucket

_F64 = torch.float64  # per-unit sums and the rules run in double; elements stay in their dtype


def _take(t: Tensor, index: Tensor, out: Tensor) -> None:
    """``out = t.flatten()[index]``; a contiguous tensor through its 1-D view (twice as fast)."""
    if t.is_contiguous():
        torch.index_select(t.view(-1), 0, index, out=out)
    else:
        torch.take(t, index.long(), out=out)  # take and put_ want int64 positions


def _add_at(t: Tensor, index: Tensor, values: Tensor) -> None:
    """``t.flatten()[index] += values`` in place (``index`` without repeats)."""
    if t.is_contiguous():
        t.view(-1).index_add_(0, index, values)
    else:
        t.put_(index.long(), values, accumulate=True)


class ForgetStep:
    """The forgetting of one step; see the module docstring for the three phases.

    ``b_hi`` (n_q,), the upper bit bounds in force, turns the paper's step rule on (None: the
    forgetting never writes a step); ``rule`` is the forget rule that gives γ.
    """

    def __init__(
        self,
        rows: RedundantRows,
        table: QuantizerTable,
        b_hi: Tensor | None,
        *,
        rule: ForgetStrategy,
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.rows = rows
        self.table = table
        self.rule = rule  # gives γ per unit (`geta.optim.strategies`)
        self.step_rule = b_hi is not None and len(table) > 0
        # a rule whose γ does not depend on ∇ (``needs_grad=False``): without the step rule ∇'s
        # rows are then neither kept nor summed
        self.needs_grad = rule.needs_grad or self.step_rule
        # the statistics live on the parameters' device: no host sync during the step
        self.device = rows.slices[0].ref.tensor.device if rows.slices else torch.device("cpu")
        if self.step_rule:
            assert b_hi is not None, "the step rule needs the upper bit bounds"
            self.scalars = table.scalars()  # (step, qmax, exponent), (n_q,) before this step's update
            lo, hi = table.bounds(b_hi, self.scalars[1], self.scalars[2])
            self.step_min, self.step_max = lo.to(self.device, _F64), hi.to(self.device, _F64)
            self.block_unit = rows.block_unit.to(self.device)
            self.block_layer = rows.block_layer.to(self.device)
        self.recorded = [[False] * len(b.parts) for b in rows.flat]
        self.reduce = reduce  # sharded parameters: adds the ranks' partial sums (in place)
        # x_R and ∇_R of each bucket, (E,), with their slice per part; held for the whole step
        self.x = [b.views("x", b.parts[0].tensor.dtype) for b in rows.flat]
        self.g = [b.views("g", b.parts[0].tensor.dtype) if self.needs_grad else None for b in rows.flat]

    def touches(self, p: Tensor) -> bool:
        return id(p) in self.rows.flat_of

    def record(self, p: Tensor, direction: Tensor) -> None:
        """Keep ``p``'s elements of R, x_R, and those of its base direction ∇ (before ``p`` moves).

        Called by the optimizer's step, under ``torch.no_grad()`` (p is read without a detach).
        """
        b, j = self.rows.flat_of[id(p)]
        index = self.rows.flat[b].parts[j].index
        _take(local_data(p), index, self.x[b][1][j])
        g = self.g[b]
        if g is not None:
            _take(local_data(direction), index, g[1][j])
        self.recorded[b][j] = True

    def _gather(self, b: int, bucket: FlatBucket) -> tuple[Tensor, Tensor | None]:
        """(x_R, ∇_R) of ``bucket``, (E,) each; a tensor that did not move has ∇ = 0."""
        (x, xs), g = self.x[b], self.g[b]
        for j, part in enumerate(bucket.parts):
            if not self.recorded[b][j]:  # no gradient: the tensor kept its values
                _take(local_data(part.tensor).detach(), part.index, xs[j])
                if g is not None:
                    g[1][j].zero_()
        return x, None if g is None else g[0]

    def _split(self, bucket: FlatBucket, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(c, r) of the step rule: clipped values and rounding residuals of quantized parts.

        Without the step rule c = x and r = None; unquantized parts have c = x and r = 0.
        """
        if not self.step_rule:
            return x, None
        step, qmax, exponent = self.scalars
        c, r = bucket.buffer("c", x.dtype), bucket.buffer("r", x.dtype)
        for part, at, size in zip(bucket.parts, bucket.offsets, bucket.sizes, strict=True):
            xs, cs, rs = x.narrow(0, at, size), c.narrow(0, at, size), r.narrow(0, at, size)
            if part.quant >= 0:
                q, signed = part.quant, self.table.quantizers[part.quant].signed
                c_part, r_part = rules.forget_parts(xs, step[q], qmax[q], exponent[q], signed=signed)
                cs.copy_(c_part)
                rs.copy_(r_part)
            else:
                cs.copy_(xs)
                rs.zero_()
        return c, r

    def _stats(self, prepared: list[_Prepared]) -> tuple[Tensor, Tensor]:
        """(‖∇‖², ‖c‖², <c, ∇>) per unit, (3, n_R), and <∇_l, r_l> per block, (n_B,).

        Products in the elements' dtype, summed in float64: a segment sum over the runs, then
        the runs' sums added into their units (blocks).
        """
        n_units, n_blocks = self.rows.units.numel(), self.rows.block_unit.numel()
        sums = torch.zeros(3, n_units, dtype=_F64, device=self.device)
        r_dot = torch.zeros(n_blocks + 1, dtype=_F64, device=self.device)  # the last: no block
        for bucket, c, g, r in prepared:
            pairs = ((g, g), (c, c), (c, g)) if g is not None else ((c, c),)
            wide = bucket.buffer("w", _F64, width=len(pairs))  # (E, 3) or (E,)
            for k, (a, b) in enumerate(pairs):  # the product in the elements' dtype, stored wide
                torch.mul(a, b, out=wide if len(pairs) == 1 else wide[:, k])
            runs = torch.segment_reduce(wide, "sum", lengths=bucket.run_lengths, unsafe=True)
            units = bucket.run_unit.to(self.device)
            if len(pairs) == 1:
                sums[1].index_add_(0, units, runs.to(self.device))
            else:
                sums.index_add_(1, units, runs.to(self.device).T)
            if r is not None and g is not None:
                one = bucket.buffer("w1", _F64)
                torch.mul(r, g, out=one)
                runs = torch.segment_reduce(one, "sum", lengths=bucket.run_lengths, unsafe=True)
                r_dot.index_add_(0, bucket.run_block.to(self.device), runs.to(self.device))
        if self.reduce is not None:  # one collective for both
            both = self.reduce(torch.cat([sums.reshape(-1), r_dot[:n_blocks]]))
            return both[: sums.numel()].reshape(sums.shape), both[sums.numel() :]
        return sums, r_dot[:n_blocks]

    @torch.no_grad()
    def apply(self, *, lr: float, period_len: int, t: int) -> Tensor:
        """Choose γ and the layer steps, set the steps, forget; returns γ per unit (n_R,)."""
        prepared = []
        for b, bucket in enumerate(self.rows.flat):
            x, g = self._gather(b, bucket)
            c, r = self._split(bucket, x)
            prepared.append((bucket, c, g, r))
        sums, r_dot = self._stats(prepared)
        grad_sq, c_sq, c_dot = sums.unbind(0)
        gamma = self.rule.rate(grad_sq, c_sq, c_dot, lr=lr, period_len=period_len, t=t)
        layer_step = None
        if self.step_rule and self.rows.block_unit.numel():
            layer = self.block_layer
            gamma, block_step = rules.forget_steps(
                gamma, grad_sq, self.block_unit, r_dot, self.step_min[layer], self.step_max[layer], lr=lr
            )
            current = self.table.scalars()[0]  # (n_q,) after this step's gradient update
            device = current.device
            layer_step = rules.layer_steps(layer.to(device), block_step.to(device, current.dtype), current)
            self.table.write_steps(layer_step)
        for bucket, c, _, r in prepared:
            # γ (c + d_l r) = γ Q(x) for quantized elements, γ x otherwise; (E,)
            q_term = c
            if r is not None and layer_step is not None:
                q_term = bucket.buffer("q", c.dtype)
                for part, at, size in zip(bucket.parts, bucket.offsets, bucket.sizes, strict=True):
                    qs, cs = q_term.narrow(0, at, size), c.narrow(0, at, size)
                    if part.quant >= 0:
                        torch.mul(r.narrow(0, at, size), layer_step[part.quant].to(c.dtype), out=qs)
                        qs.add_(cs)
                    else:
                        qs.copy_(cs)
            term = bucket.per_element(gamma.to(c.device, c.dtype).neg())
            term.mul_(q_term)  # -γ (c + d_l r), added below
            for part, piece in zip(bucket.parts, bucket.split(term), strict=True):
                _add_at(local_data(part.tensor), part.index, piece)  # no_grad: in place on p
        return gamma
