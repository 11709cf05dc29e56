"""Part 3 of a QASSO step (docs/method.md §3.1): p <- p - lr ∇, then the scalars kept in domain.

- `apply_directions` turns the gradients of one param group into base directions ∇
  (`geta.optim.direction`) and moves ``p <- p - lr ∇``; plain tensors go through the foreach
  directions a chunk of at most `CHUNK` elements at a time (`chunks`), so that the directions
  alive at once stay small next to the model, sharded (DTensor) ones one by one. A forgetting
  step (`geta.optim.forget.ForgetStep`) records ∇ of its rows' tensors before they move.
- `DomainClamp` keeps every moved quantizer scalar inside its domain (qmax > 0, the exponent in
  `geta.optim.rules.EXPONENT_RANGE`).

>>> import torch
>>> [len(run) for run in chunks([torch.zeros(3), torch.zeros(2), torch.zeros(9)], 5)]
[2, 1]
>>> qmax = torch.tensor(-1.0)  # a quantizer scalar moved out of its domain (0.5, 2.0)
>>> clamp = DomainClamp({id(qmax): (0.5, 2.0)})
>>> clamp([qmax]); qmax.item()
0.5
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from geta.optim.direction import Variant, group_direction, group_directions
from geta.optim.forget import ForgetStep

__all__ = ["CHUNK", "DomainClamp", "apply_directions", "chunks"]

CHUNK = 1 << 22  # elements per foreach chunk of the update (16 MiB of float32 directions)


def chunks(params: list[Tensor], limit: int) -> list[list[Tensor]]:
    """``params`` in order, cut into runs of at most ``limit`` elements (a larger tensor alone)."""
    out: list[list[Tensor]] = []
    size = limit
    for p in params:
        n = p.numel()
        if size + n > limit:
            out.append([])
            size = 0
        out[-1].append(p)
        size += n
    return out


def apply_directions(
    variant: Variant,
    group: dict[str, Any],
    params: list[Tensor],
    state: Any,
    forget: ForgetStep | None,
    *,
    sharded: bool,
) -> None:
    """p <- p - lr ∇ for ``params`` of ``group`` (forgetting records ∇ of R's tensors first).

    ``state`` maps a parameter to its optimizer state (``torch.optim.Optimizer.state``). Plain
    tensors go through the foreach directions (`direction.sgd_directions`, bit for bit the
    per-tensor ones) a chunk of at most `CHUNK` elements at a time; sharded (DTensor) ones one
    by one (``sharded``).
    """
    lr = group["lr"]
    if sharded:
        one = group_direction(variant, group)
        runs = [[p] for p in params]
    else:
        many = group_directions(variant, group)
        runs = chunks(params, CHUNK)
    for chunk in runs:
        if sharded:
            directions = [one(p, p.grad, state[p]) for p in chunk]
        else:
            directions = many(chunk, [p.grad for p in chunk], [state[p] for p in chunk])
        if forget is not None:
            for p, direction in zip(chunk, directions, strict=True):
                if id(p) in forget.rows.flat_of:
                    forget.record(p, direction)
        if sharded:
            chunk[0].add_(directions[0], alpha=-lr)
        else:
            torch._foreach_add_(chunk, directions, alpha=-lr)


class DomainClamp:
    """Clamps quantizer scalars into their domains: ``domains`` maps ``id(scalar)`` to (lo, hi).

    Called under ``torch.no_grad()`` (as `QASSO.step` is): the scalars are leaf parameters.

    On the CPU only the scalars outside their domain are clamped (one vectorised test instead
    of a clamp per scalar; elsewhere the test would cost a host sync). The bounds of the last
    list of scalars are kept, as the same scalars move at every step.
    """

    def __init__(self, domains: dict[int, tuple[float, float]]) -> None:
        self.domains = domains
        self._bounds: tuple[tuple[object, ...], Tensor, Tensor] | None = None  # (key, lo, hi)

    def __call__(self, params: list[Tensor]) -> None:
        """Clamp every scalar of ``params`` (each a key of ``domains``) into its domain."""
        if params and all(p.is_cpu and p.dtype == params[0].dtype for p in params):
            values = torch.stack(params)  # compared in the scalars' dtype, as clamp_ does
            key = (values.dtype, *map(id, params))
            if self._bounds is None or self._bounds[0] != key:
                lo, hi = (torch.tensor(b, dtype=values.dtype) for b in zip(*map(self.domains.get, key[1:])))
                self._bounds = (key, lo, hi)
            outside = (values < self._bounds[1]) | (values > self._bounds[2])
            if not bool(outside.any()):
                return
            params = [p for p, out in zip(params, outside.tolist(), strict=True) if out]
        for p in params:
            p.clamp_(*self.domains[id(p)])
