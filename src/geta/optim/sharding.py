"""QASSO on parameters sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``, DTensor).

After `geta.shard` the plan's parameters are DTensors: each rank holds one contiguous chunk of
every weight along its shard dim (FSDP2: dim 0, chunks as ``torch.chunk`` cuts them), while the
quantizers' 0-dim scalars stay ordinary, replicated parameters. The optimizer then works on the
local chunks only, with a few collectives on small vectors:

- element-wise work (base directions, the update, clipping) runs on the DTensors as
  ``torch.optim`` does under FSDP2;
- the replicated parameters' gradients (FSDP does not reduce ignored parameters) are averaged
  over the ranks at the start of every step, like FSDP averages the sharded ones: one
  ``all_reduce`` (`Sharding.reduce_replicated_grads`);
- per-unit sums (saliency statistics, the forgetting step's statistics) are partial sums over
  the local elements of each unit, added over the ranks: one ``all_reduce`` of a (3, N) or
  (3 n_R + n_B,) vector (`ShardedLayout`, `geta.optim.forget.ForgetStep`'s ``reduce``), so every
  rank selects the same units and takes the same forget rate;
- the forgetting and the committed zeros write the local elements of the selected units only
  (positions translated into the local chunk: `ShardedLayout.redundant` and `zero_positions`);
- refitting a weight quantizer's clipping (the budget bit rule) reduces max|W| (MAX) and the
  quantization errors of the candidate clippings (SUM) over the ranks: two ``all_reduce`` s
  (`ShardedQuantizerTable`).

Supported: a one-dimensional device mesh, each parameter ``Shard(d)`` (any d) or ``Replicate()``.
Anything else (HSDP's two-dimensional mesh, strided or partial placements) raises
`ShardingError` naming the parameter and its placements.

`local_data` is also what the unsharded path reads: for an ordinary tensor it is the tensor
itself, so a run without FSDP is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from geta.errors import GetaError
from geta.optim.clipping import WEIGHT_FRACTIONS
from geta.optim.quantizer_table import QuantizerTable
from geta.optim.units import FlatBucket, FlatPart, RedundantRows, SliceRef, UnitLayout
from geta.plan import Plan
from geta.quant.functional import MIN_QMAX, fake_quant, step_for_bits

__all__ = [
    "ShardedLayout",
    "ShardedQuantizerTable",
    "Sharding",
    "ShardingError",
    "is_sharded",
    "local_data",
    "sharding_of",
]


class ShardingError(GetaError):
    """A sharded parameter layout QASSO does not support (the message names what and where)."""


def is_sharded(t: Tensor) -> bool:
    """True for a DTensor (without importing ``torch.distributed.tensor``)."""
    return hasattr(t, "to_local") and hasattr(t, "placements")


def local_data(t: Tensor) -> Tensor:
    """The elements this rank holds, sharing storage: a DTensor's local chunk, else ``t`` itself.

    In-place writes into the result reach the parameter; call it under ``torch.no_grad()``.
    """
    if is_sharded(t):
        with torch.no_grad():
            return t.to_local()  # type: ignore[attr-defined, no-any-return]
    return t


@dataclass(frozen=True)
class ShardSpan:
    """The chunk of one parameter this rank holds: positions [start, stop) along ``dim``
    (``dim`` = -1: the whole tensor, replicated or unsharded)."""

    dim: int
    start: int
    stop: int

    def local(self, dim: int, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Positions ``pos`` along ``dim`` held here, translated, and the mask of those kept."""
        if dim != self.dim:
            return pos, torch.ones_like(pos, dtype=torch.bool)
        keep = (pos >= self.start) & (pos < self.stop)
        return pos[keep] - self.start, keep

    def local_flat(self, shape: torch.Size, flat: Tensor) -> tuple[Tensor, Tensor]:
        """Row-major positions ``flat`` in the global tensor held here, as positions in the
        local chunk, and the mask of those kept."""
        if self.dim < 0:
            return flat, torch.ones_like(flat, dtype=torch.bool)
        inner = math.prod(shape[self.dim + 1 :])
        n = shape[self.dim]
        coord = (flat // inner) % n
        keep = (coord >= self.start) & (coord < self.stop)
        flat = flat[keep]
        coord = coord[keep]
        outer = flat // (n * inner)
        local = outer * ((self.stop - self.start) * inner) + (coord - self.start) * inner + flat % inner
        return local, keep


_WHOLE = ShardSpan(-1, 0, 0)


def _span(p: Tensor, name: str) -> ShardSpan:
    """Where ``p``'s local chunk sits in the global tensor (checked against its local shape)."""
    if not is_sharded(p):
        return _WHOLE
    from torch.distributed.tensor import Replicate, Shard

    placements = tuple(p.placements)  # type: ignore[attr-defined]
    mesh = p.device_mesh  # type: ignore[attr-defined]
    if mesh.ndim != 1 or len(placements) != 1:
        raise ShardingError(
            f"{name}: placements {placements} on a {mesh.ndim}-D mesh; QASSO supports FSDP2 on a "
            "one-dimensional mesh (no HSDP / 2-D parallelism yet)"
        )
    placement = placements[0]
    if isinstance(placement, Replicate):
        return _WHOLE
    if type(placement) is not Shard:
        raise ShardingError(f"{name}: placement {placement} is not supported (Shard(d) or Replicate())")
    dim = placement.dim % p.dim()
    n, world, rank = p.shape[dim], mesh.size(), mesh.get_local_rank()
    chunk = -(-n // world)  # torch.chunk: ceil(n / world) per rank, the last ones shorter or empty
    start = min(rank * chunk, n)
    stop = min(start + chunk, n)
    local = local_data(p)
    if tuple(local.shape[:dim]) != tuple(p.shape[:dim]) or local.shape[dim] != stop - start:
        raise ShardingError(
            f"{name}: local shape {tuple(local.shape)} is not chunk {rank} of {world} of "
            f"{tuple(p.shape)} along dim {dim}; QASSO expects FSDP2's even chunking"
        )
    return ShardSpan(dim, start, stop)


class Sharding:
    """The sharded run's collectives: the process group, spans of the parameters, reductions."""

    def __init__(self, params: Iterable[tuple[str, Tensor]]) -> None:
        import torch.distributed as dist

        self.spans: dict[int, ShardSpan] = {}
        group = None
        for name, p in params:
            self.spans[id(p)] = _span(p, name)
            if is_sharded(p) and group is None:
                group = p.device_mesh.get_group()  # type: ignore[attr-defined]
        self.group = group
        self.world = dist.get_world_size(group)

    def span(self, t: Tensor) -> ShardSpan:
        return self.spans.get(id(t), _WHOLE)

    def all_reduce(self, value: Tensor, op: str = "sum") -> Tensor:
        """``value`` summed (``op="max"``: maximised) over the ranks, in place; returns it."""
        import torch.distributed as dist

        dist.all_reduce(value, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=self.group)
        return value

    @torch.no_grad()
    def reduce_replicated_grads(self, params: Sequence[Tensor]) -> None:
        """Average the gradients of the replicated (not sharded) ``params`` over the ranks.

        One ``all_reduce`` over all of them; a rank without a gradient contributes zeros, and a
        parameter gets a gradient wherever any rank had one (so every rank takes the same step).
        """
        params = [p for p in params if not is_sharded(p) and p.requires_grad]
        if not params:
            return
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float64)
        flat = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(torch.float64)
            for p in params
        ]
        buf = self.all_reduce(torch.cat([has, *flat]))
        at = len(params)
        for p, was in zip(params, buf[: len(params)].tolist(), strict=True):
            n = p.numel()
            if was > 0:
                value = (buf[at : at + n] / self.world).reshape(p.shape).to(p.dtype)
                if p.grad is None:
                    p.grad = value
                else:
                    p.grad.copy_(value)
            at += n


def sharding_of(plan: Plan) -> Sharding | None:
    """The `Sharding` of ``plan``'s model when any of its parameters is a DTensor, else None."""
    named = list(plan.model.named_parameters())
    if not any(is_sharded(p) for _, p in named):
        return None
    return Sharding(named)


class ShardedLayout(UnitLayout):
    """`UnitLayout` over sharded parameters: global unit ids, local elements, summed stats."""

    def __init__(self, groups: Any, quant_of: Callable[[Tensor], int], sharding: Sharding) -> None:
        super().__init__(groups, quant_of)
        self.sharding = sharding
        # per slice: the positions along its dim held here (local coordinates) and their unit
        self._local: list[tuple[Tensor, Tensor]] = []
        for ref in self.slices:
            m = ref.index.shape[1]
            unit = torch.arange(ref.size, device=ref.index.device).repeat_interleave(m) + ref.offset
            pos, keep = sharding.span(ref.tensor).local(ref.dim, ref.index.reshape(-1))
            self._local.append((pos, unit[keep]))

    @torch.no_grad()
    def unit_stats(
        self, grad_of: Callable[[Tensor], Tensor | None], only: Callable[[SliceRef], bool] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(‖x_j‖², <x_j, g_j>, ‖g_j‖²) per unit (N,), float64: local sums added over the ranks
        (of the slices ``only`` accepts, or all)."""
        stats = torch.zeros(3, self.num_units, dtype=torch.float64)
        for ref, (pos, unit) in zip(self.slices, self._local, strict=True):
            if pos.numel() == 0 or (only is not None and not only(ref)):
                continue
            unit = unit.cpu()
            x = local_data(ref.tensor).movedim(ref.dim, 0).index_select(0, pos)
            x = x.reshape(pos.numel(), -1).double()  # (positions, local rest)
            stats[0].index_add_(0, unit, x.pow(2).sum(1).cpu())
            grad = grad_of(ref.tensor)
            if grad is not None:
                g = local_data(grad).movedim(ref.dim, 0).index_select(0, pos).reshape(pos.numel(), -1)
                g = g.double()
                stats[1].index_add_(0, unit, (x * g).sum(1).cpu())
                stats[2].index_add_(0, unit, g.pow(2).sum(1).cpu())
        self.sharding.all_reduce(stats)
        x_sq, xg, g_sq = stats.unbind(0)
        return x_sq, xg, g_sq

    def redundant(self, selected: Tensor, num_quantizers: int) -> RedundantRows:
        """The global `RedundantRows`, with every flat bucket cut down to the local elements.

        The runs (one row of one slice each) keep their units and blocks; a run whose elements
        all live on other ranks keeps length 0.
        """
        rows = super().redundant(selected, num_quantizers)
        flat = tuple(self._localize(bucket) for bucket in rows.flat)
        return RedundantRows(rows.units, rows.slices, rows.block_unit, rows.block_layer, flat, rows.flat_of)

    def _localize(self, bucket: FlatBucket) -> FlatBucket:
        parts, keeps = [], []
        for part in bucket.parts:
            index, keep = self.sharding.span(part.tensor).local_flat(part.tensor.shape, part.index)
            parts.append(FlatPart(part.tensor, index, part.quant))
            keeps.append(keep)
        keep = torch.cat(keeps)
        n_runs = bucket.run_lengths.numel()
        run_of = torch.repeat_interleave(torch.arange(n_runs, device=keep.device), bucket.run_lengths)
        lengths = torch.bincount(run_of[keep], minlength=n_runs).to(bucket.run_lengths)
        sizes = tuple(int(p.index.numel()) for p in parts)
        offsets = tuple(sum(sizes[:j]) for j in range(len(sizes)))
        return FlatBucket(tuple(parts), offsets, sizes, lengths, bucket.run_unit, bucket.run_block)

    def zero_positions(self, units: Tensor) -> list[tuple[Tensor, int, Tensor]]:
        """(tensor, dim, positions in its local chunk) to zero for the global ``units`` mask."""
        out = []
        for ref, (pos, unit) in zip(self.slices, self._local, strict=True):
            hit = units[unit.cpu()].to(pos.device)
            if bool(hit.any()):
                out.append((ref.tensor, ref.dim, pos[hit]))
        return out


class ShardedQuantizerTable(QuantizerTable):
    """`QuantizerTable` whose clipping refit reduces over the shards of each weight."""

    def __init__(self, plan: Plan, sharding: Sharding) -> None:
        super().__init__(plan)
        self.sharding = sharding

    @torch.no_grad()
    def fit_weight_ranges_(self, bits: Tensor, which: Tensor) -> None:
        """`QuantizerTable.fit_weight_ranges_` with max|W| and the errors summed over the ranks."""
        todo = [i for i, w in self.weights.items() if bool(which[i]) and w.device.type != "meta"]
        if not todo:
            return
        peaks = torch.zeros(len(todo), dtype=torch.float32)
        for k, i in enumerate(todo):
            w, q = local_data(self.weights[i]), self.quantizers[i]
            if w.numel():
                peaks[k] = (w.abs() if q.signed else w.clamp_min(0.0)).amax().float().cpu()
        self.sharding.all_reduce(peaks, op="max")
        errors = torch.zeros(len(todo), len(WEIGHT_FRACTIONS), dtype=torch.float32)
        candidates = []
        for k, i in enumerate(todo):
            w, q = local_data(self.weights[i]), self.quantizers[i]
            peak = peaks[k].to(q.qmax).clamp_min(MIN_QMAX)
            row = []
            for j, frac in enumerate(WEIGHT_FRACTIONS):
                qmax = (peak * frac).to(q.qmax.dtype)
                row.append(qmax)
                step = step_for_bits(bits[i], qmax, q.exponent, signed=q.signed).to(q.step.dtype)
                errors[k, j] = (fake_quant(w, step, qmax, q.exponent, signed=q.signed) - w).pow(2).sum().cpu()
            candidates.append((peak, row))
        self.sharding.all_reduce(errors)
        for k, i in enumerate(todo):
            peak, row = candidates[k]
            best, best_err = peak, math.inf
            for j, err in enumerate(errors[k].tolist()):
                if err < best_err:
                    best, best_err = row[j], err
            self.quantizers[i].qmax.copy_(best)
