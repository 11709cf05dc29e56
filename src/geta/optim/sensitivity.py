"""`FisherTracker`: how much each quantizer's rounding would hurt the loss, measured in training.

For every quantizer it accumulates Σ (∂L/∂Q(x))² over the elements of its output Q(x) during
backward passes — the diagonal empirical Fisher information summed over the tensor, the F_i of
`geta.optim.bits`. The same measure serves weights (Q(W)) and activations (Q(x)): for a weight
the batch-mean gradient squared underestimates the per-sample Fisher by the batch size when the
mean gradient is small, and for an activation the per-sample gradients of the mean loss carry
the same 1/batch factor, so the two stay comparable.

The tracker hooks the quantizer modules (a forward hook that registers a tensor hook on the
output when it requires grad): no change to the model or its outputs, nothing in eval or
``no_grad`` forwards. `FisherTracker.take` returns what was summed since the last call (one
optimizer step, including gradient accumulation) and resets it; `remove` drops the hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FisherTracker", "UnitCosts"]


class FisherTracker:
    """Σ (∂L/∂Q)² per quantizer since the last `take`, over ``quantizers`` (in table order)."""

    def __init__(self, quantizers: Sequence[nn.Module]) -> None:
        self._device = next((p.device for q in quantizers for p in q.parameters()), torch.device("cpu"))
        self._n = len(quantizers)
        # (quantizer, Σ over one output) per backward call since the last `take`: the backward
        # pass only appends, `take` adds them up in one operation
        self._pending: list[tuple[int, Tensor]] = []
        self._ids: tuple[tuple[int, ...], Tensor] | None = None  # `take_into`'s last index
        self._handles = [q.register_forward_hook(self._hook(i)) for i, q in enumerate(quantizers)]

    def _hook(self, i: int) -> Any:
        def on_forward(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            if isinstance(out, Tensor) and out.requires_grad:
                out.register_hook(lambda g: self._add(i, g))

        return on_forward

    def _add(self, i: int, grad: Tensor) -> None:
        # one BLAS dot per tensor, in float32 (float64 for float64 tensors): a float64 copy of
        # every activation gradient cost more than the rest of the optimizer step, for a
        # heuristic whose relative error this way is ~1e-6; summed over tensors and steps in float64
        flat = grad.detach().reshape(-1)
        if flat.dtype not in (torch.float32, torch.float64):
            flat = flat.float()
        self._pending.append((i, torch.dot(flat, flat)))

    def take_into(self, total: Tensor) -> None:
        """``total += take().to(total)``, without the intermediate vector when every quantizer
        ran once and ``total`` is on the quantizers' device (the same sums, bit for bit)."""
        pending = self._pending
        ids = tuple(i for i, _ in pending)
        if not pending or len(set(ids)) != len(ids) or total.device != self._device:
            total += self.take().to(total.device)
            return
        self._pending = []
        parts = [v for _, v in pending]
        if any(v.device != self._device for v in parts):
            values = torch.stack([v.to(self._device, torch.float64) for v in parts])
        else:
            values = torch.stack(parts).to(torch.float64)  # float32 and float64 promote exactly
        if self._ids is None or self._ids[0] != ids:
            self._ids = (ids, torch.tensor(ids, device=self._device))
        total.index_add_(0, self._ids[1], values)

    def take(self) -> Tensor:
        """The sums since the last call, (n,) float64 (on the quantizers' device); resets them."""
        out = torch.zeros(self._n, dtype=torch.float64, device=self._device)
        pending, self._pending = self._pending, []
        if not pending:
            return out
        ids = [i for i, _ in pending]
        parts = [v for _, v in pending]
        if all(v.device == self._device for v in parts):
            values = torch.stack(parts).to(torch.float64)  # float32 and float64 promote exactly
        else:
            values = torch.stack([v.to(self._device, torch.float64) for v in parts])
        if len(set(ids)) == len(ids):  # each quantizer once: one add, in any order
            out.index_add_(0, torch.tensor(ids, device=self._device), values)
        else:  # a quantizer ran twice (shared module, accumulation): add in backward order
            for i, v in zip(ids, values.unbind(), strict=True):
                out[i] += v
        return out

    def remove(self) -> None:
        """Detach the hooks (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []


class UnitCosts:
    """How much removing each prunable unit would hurt the loss, measured in training.

    Removing unit j takes its contribution away from the layers that consume it: the columns
    x_j of their weights (dim 1 of a linear or convolution weight) go to zero. To second order
    with the diagonal empirical Fisher F_e ≈ E[g_e²] (optimal brain damage) the loss grows by
    c_j = ½ Σ_e F_e x_e² over those columns, the c_j of `geta.optim.widths`: the same measure
    the bit rule applies to rounding noise (½ Σ_e F_e σ², `geta.optim.bits`), with the removed
    value x_e in place of the rounding error. Its terms are positive, so it does not cancel
    where a normalisation makes the loss blind to scaling a whole weight (the sum of the
    columns' first-order effects <x_j, g_j> is then zero, and any measure built on them says
    a whole layer is free to remove). The unit's producing rows (dim 0, a norm's scale and
    shift) are left out: zeroing them removes the same contribution a second time. A unit
    without consuming columns is measured over all its slices. `observe` adds c_j for every
    unit at one step (the optimizer samples steps), `mean` averages the observed steps.
    """

    def __init__(self, layout: Any, consumers: set[int]) -> None:
        """``consumers``: ids of the weights of multiplying ops (their dim 1 is their input)."""
        self.total = torch.zeros(layout.num_units, dtype=torch.float64)  # Σ steps c_j, (N,)
        self.count = 0
        self._consumes = lambda ref: ref.dim == 1 and id(ref.tensor) in consumers
        has = torch.zeros(layout.num_units, dtype=torch.bool)
        for ref in layout.slices:
            if self._consumes(ref):
                has[ref.offset : ref.offset + ref.size] = True
        self._fallback = None if bool(has.all()) else ~has  # units measured over all slices

    @staticmethod
    def _fisher_weighted(t: Tensor) -> Tensor | None:
        """g² ∘ x of a parameter: `UnitLayout.unit_stats`' <x, ·> of it is Σ_e g_e² x_e²."""
        return None if t.grad is None else t.grad.square() * t.detach()

    def observe(self, layout: Any) -> None:
        """Add this step's c_j = ½ Σ_e g_e² x_e² (gradients in ``.grad``)."""
        _, obd, _ = layout.unit_stats(self._fisher_weighted, self._consumes)
        if self._fallback is not None:
            _, every, _ = layout.unit_stats(self._fisher_weighted)
            obd = torch.where(self._fallback, every, obd)
        self.total += 0.5 * obd.to(self.total)
        self.count += 1

    def mean(self) -> Tensor:
        """The mean cost per unit over the observed steps, (N,) float64 (zeros before any)."""
        return self.total / max(self.count, 1)

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total.clone(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = state["total"].to(torch.float64).clone()
        self.count = int(state["count"])
