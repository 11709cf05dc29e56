"""`ForgetStep`: one joint-stage forgetting step on the redundant rows R (method.md §3.4).

A step of the joint stage runs in three phases around the ordinary update:

1. ``ForgetStep(...)`` (before any parameter moves): gathers x_R, splits quantized rows into
   the clipped value c and the rounding residual r at the quantizer's *current* step, and
   records every quantizer's bit interval for the current qmax and exponent;
2. `ForgetStep.record` (while the optimizer walks its parameters): keeps the rows of each
   base direction ∇;
3. `ForgetStep.apply` (after the ordinary update x <- x - α∇ of every row): statistics per
   unit and per (unit, layer) block with one ``index_add_`` per slice, the pure rules of
   `geta.optim.rules` for γ and the per-layer steps, the new step of each touched quantizer,
   and finally x_R <- x_R - γ (c + d_l r) with one ``index_add_`` per slice.

With ``step_rule=False`` (the default bit rule of geta, `geta.optim.modes.BitRule.BUDGET`) the
quantizers' steps belong to the bit allocation: the forgetting shrinks the raw rows,
x_R <- x_R - α∇ - γ x_R, and never writes a step (the paper's rule would overwrite what the bits
learned, pinning every touched layer at b_lo — method.md §3.5).

An element shared by two selected units (a weight's row in one group and its column in
another) belongs to one of them only (`geta.optim.layout`: its first slice owns it), so the
units' element sets are disjoint: each unit's statistics and update cover exactly the elements
it owns, and the descent bound of `geta.optim.rules` holds for every unit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geta.optim import rules
from geta.optim.layout import RedundantRows, gather_rows, scatter_rows_add_
from geta.optim.quantizers import QuantizerTable

__all__ = ["ForgetStep"]

_F64 = torch.float64  # per-row sums and the rules run in double; elements stay in their dtype


def _row_sum(a: Tensor, b: Tensor, w: Tensor | None) -> Tensor:
    """Σ_columns w a b per row, accumulated in float64: shape (k,)."""
    prod = a * b if w is None else a * b * w
    return prod.sum(1, dtype=_F64)


class ForgetStep:
    """The forgetting of one step; see the module docstring for the three phases."""

    def __init__(
        self,
        rows: RedundantRows,
        table: QuantizerTable,
        b_hi: Tensor,
        *,
        floor: float = 0.0,
        step_rule: bool = True,
    ) -> None:
        self.rows = rows
        self.table = table
        self.floor = floor  # γ >= floor / (T - t), see `rules.forget_rate`
        self.step_rule = step_rule and len(table) > 0
        # the statistics live on the parameters' device: no host sync during the step
        self.device = rows.slices[0].ref.tensor.device if rows.slices else torch.device("cpu")
        self.block_unit = rows.block_unit.to(self.device)
        self.block_layer = rows.block_layer.to(self.device)
        if self.step_rule:
            step, qmax, exponent = table.scalars()  # (n_q,) before this step's update
            lo, hi = table.bounds(b_hi, qmax, exponent)
            self.step_min, self.step_max = lo.to(self.device, _F64), hi.to(self.device, _F64)
        self.c: list[Tensor] = []  # clipped values c per slice, (k, m*rest); x if not quantized
        self.r: list[Tensor | None] = []  # rounding residuals r (None: not quantized)
        self.grad: list[Tensor | None] = [None] * len(rows.slices)  # ∇ rows, filled by `record`
        self._slots: dict[int, list[int]] = {}  # id(tensor) -> positions in rows.slices
        for i, rs in enumerate(rows.slices):
            ref = rs.ref
            self._slots.setdefault(id(ref.tensor), []).append(i)
            x = gather_rows(ref.tensor.detach(), ref.dim, rs.pos, rs.rows)  # x_R rows
            if ref.quant >= 0 and self.step_rule:
                q, signed = ref.quant, table.quantizers[ref.quant].signed
                c, r = rules.forget_parts(x, step[q], qmax[q], exponent[q], signed=signed)
                self.c.append(c)
                self.r.append(r)
            else:
                self.c.append(x)
                self.r.append(None)

    def touches(self, p: Tensor) -> bool:
        return id(p) in self._slots

    def record(self, p: Tensor, direction: Tensor) -> None:
        """Keep the rows of ``p``'s base direction ∇ that belong to R."""
        for i in self._slots.get(id(p), ()):
            rs = self.rows.slices[i]
            self.grad[i] = gather_rows(direction, rs.ref.dim, rs.pos, rs.rows)

    def _stats(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(‖∇‖², ‖c‖², <c, ∇>) per unit (n_R,) and <∇_l, r_l> per block (n_B,)."""
        n_units, n_blocks = self.rows.units.numel(), self.rows.block_unit.numel()
        grad_sq = torch.zeros(n_units, dtype=_F64, device=self.device)
        c_sq, c_dot = torch.zeros_like(grad_sq), torch.zeros_like(grad_sq)
        r_dot = torch.zeros(n_blocks, dtype=_F64, device=self.device)
        for i, rs in enumerate(self.rows.slices):
            c, g, w = self.c[i], self.grad[i], rs.owned  # (k, m*rest) each; w: ownership 0/1
            c_sq.index_add_(0, rs.unit, _row_sum(c, c, w))
            if g is None:
                continue  # a tensor without gradient: ∇ = 0 on its rows
            grad_sq.index_add_(0, rs.unit, _row_sum(g, g, w))
            c_dot.index_add_(0, rs.unit, _row_sum(c, g, w))
            r = self.r[i]
            if r is not None and rs.block is not None:
                r_dot.index_add_(0, rs.block, _row_sum(r, g, w))
        return grad_sq, c_sq, c_dot, r_dot

    @torch.no_grad()
    def apply(self, *, lr: float, period_len: int, t: int) -> Tensor:
        """Choose γ and the layer steps, set the steps, forget; returns γ per unit (n_R,)."""
        grad_sq, c_sq, c_dot, r_dot = self._stats()
        gamma = rules.forget_rate(grad_sq, c_sq, c_dot, lr=lr, period_len=period_len, t=t, floor=self.floor)
        layer_step = None
        if self.step_rule and self.block_unit.numel():
            layer = self.block_layer
            gamma, block_step = rules.forget_steps(
                gamma, grad_sq, self.block_unit, r_dot, self.step_min[layer], self.step_max[layer], lr=lr
            )
            current = self.table.scalars()[0]  # (n_q,) after this step's gradient update
            device = current.device
            layer_step = rules.layer_steps(layer.to(device), block_step.to(device, current.dtype), current)
            self.table.write_steps(layer_step)
        for i, rs in enumerate(self.rows.slices):
            ref = rs.ref
            c, r = self.c[i], self.r[i]
            # γ (c + d_l r) = γ Q(x) for quantized rows, γ x otherwise; (k, m*rest)
            q_term = c if r is None or layer_step is None else c + layer_step[ref.quant].to(c.dtype) * r
            term = gamma[rs.unit].to(c.device, c.dtype)[:, None] * q_term
            if rs.owned is not None:
                term = term * rs.owned  # each element forgotten once, by its owner
            scatter_rows_add_(ref.tensor.data, ref.dim, rs.pos, term.neg_())
        return gamma
