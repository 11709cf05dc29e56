"""`UnitLayout`: one global numbering of the prunable units and vectorised access to their rows.

Every unit of every prunable group gets a global id 0..N-1 (group by group, in plan order). A
`SliceRef` is one parameter slice of a group; its unit ``j`` is global unit ``offset + j`` and
owns the positions ``index[j]`` along ``dim`` of ``tensor`` -- the same row view as
`ParamSlice.rows` everywhere (docs/method.md defect 4). Per-unit sums over all slices of a unit are
one gather and one row reduction per slice, written into the contiguous id range of that slice,
so no Python loop runs over groups or units, only over slices (a few per tensor).

`RedundantRows` is the same view restricted to the units selected in a pruning period. Selected
units can share tensor elements: row i of ``fc2.weight`` (a unit of the next group) and column j
(a unit of this group) meet at element (i, j). The forgetting rule needs disjoint variables to
keep its per-unit descent guarantee, so every shared element gets one *owner*: the selected
slice that comes first in layout order. Each gathered row carries a 0/1 ownership mask; sums
over owned entries are sums over each unit's own elements (the units partition the union of
the redundant rows), and an update scattered back through all slices reaches every element
exactly once, with its owner's forget rate. Per slice it holds the positions of the selected
rows, their local unit ids and, for a quantized tensor, their (unit, layer) blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from geta.graph.prune_group import PruneGroup

__all__ = [
    "FlatBucket",
    "FlatPart",
    "RedundantRows",
    "RedundantSlice",
    "SCRATCH_KEPT",
    "SliceRef",
    "UnitLayout",
    "flat_rows",
    "gather_rows",
]

SCRATCH_KEPT = 1 << 22  # elements of the largest work buffer a `FlatBucket` keeps between steps


def gather_rows(tensor: Tensor, dim: int, pos: Tensor, rows: int) -> Tensor:
    """The positions ``pos`` (rows * m,) along ``dim`` of ``tensor`` as (rows, m * rest)."""
    return tensor.movedim(dim, 0).index_select(0, pos).reshape(rows, -1)


def scatter_rows_add_(tensor: Tensor, dim: int, pos: Tensor, values: Tensor) -> None:
    """``tensor[positions pos along dim] += values`` for ``values`` shaped like `gather_rows`."""
    moved_shape = (pos.numel(), *tensor.movedim(dim, 0).shape[1:])
    tensor.index_add_(dim, pos, values.reshape(moved_shape).movedim(0, dim))


@dataclass(frozen=True, eq=False)
class SliceRef:
    """One parameter slice of a prunable group, placed in the global unit numbering."""

    tensor: Tensor  # the nn.Parameter, by identity
    name: str  # display only
    dim: int
    index: Tensor  # (size, m) int64, on the tensor's device
    offset: int  # global id of the slice's unit 0
    quant: int  # index of the tensor's weight quantizer in the optimizer's table, -1: none

    @property
    def size(self) -> int:
        return int(self.index.shape[0])

    def positions(self, local_units: Tensor) -> Tensor:
        """Positions along ``dim`` owned by ``local_units`` (k,): shape (k * m,)."""
        return self.index[local_units].reshape(-1)


@dataclass(frozen=True, eq=False)
class RedundantSlice:
    """The selected rows of one slice during a pruning period."""

    ref: SliceRef
    pos: Tensor  # (k * m,) positions along ref.dim
    rows: int  # k: selected units of this slice
    unit: Tensor  # (k,) local ids 0..n_R-1 of the selected units
    block: Tensor | None  # (k,) (unit, layer) block of each row; None if not quantized
    owned: Tensor | None  # (k, m*rest) 1 where this row owns the element, else 0; None: all 1


@dataclass(frozen=True, eq=False)
class RedundantRows:
    """The rows of the redundant set R, grouped by slice, plus the block table."""

    units: Tensor  # (n_R,) global unit ids, ascending
    slices: tuple[RedundantSlice, ...]
    block_unit: Tensor  # (n_B,) local unit of each block
    block_layer: Tensor  # (n_B,) quantizer index of each block
    flat: tuple[FlatBucket, ...]  # the same owned elements per tensor (`flat_rows`)
    flat_of: dict[int, tuple[int, int]]  # id(tensor) -> (bucket, part) in ``flat``


@dataclass(frozen=True, eq=False)
class FlatPart:
    """The elements of R one tensor holds, each once (with its owner), read as a 1-D tensor."""

    tensor: Tensor  # the nn.Parameter, by identity
    index: Tensor  # (E,) row-major positions in the tensor (flattened), int32 below 2**31 elements
    quant: int  # the tensor's weight quantizer in the optimizer's table, -1: none


@dataclass(frozen=True, eq=False)
class FlatBucket:
    """The `FlatPart` s of one device and dtype, concatenated: one op per step for all of them.

    The concatenation is a sequence of *runs*, the elements one row of one slice owns (one
    unit each), so per-unit sums are a segment sum over runs plus a small ``index_add_``.
    ``scratch`` keeps the step's work buffers between steps on the CPU, where allocating them
    costs page faults at every step, but only those of at most `SCRATCH_KEPT` elements: a larger
    one is allocated by the step that uses it and freed when the step ends, so that it does not
    weigh on the peak memory of the next forward and backward (on a 125 M Llama the kept buffers
    of R were ~16 bytes per element of R, hundreds of MB; docs/benchmarks.md).
    """

    parts: tuple[FlatPart, ...]
    offsets: tuple[int, ...]  # where each part starts in the concatenation
    sizes: tuple[int, ...]  # E of each part
    run_lengths: Tensor  # (n_runs,) elements of each run
    run_unit: Tensor  # (n_runs,) local unit of each run
    run_block: Tensor  # (n_runs,) (unit, layer) block of each run; n_B where not quantized
    scratch: dict[str, Tensor] = field(default_factory=dict)
    _views: dict[str, tuple[Tensor, tuple[Tensor, ...]]] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        """E_total: the elements of all parts."""
        return sum(self.sizes)

    def per_element(self, values: Tensor) -> Tensor:
        """``values`` (n_R,), one per local unit, spread to every element, (E_total,).

        A small bucket gathers through a per-element unit table kept like a work buffer (the
        fast path); a large one repeats each run's value over the run and keeps no table.
        """
        unit = self.scratch.get("unit")
        if unit is None and self.numel <= SCRATCH_KEPT and self.run_lengths.device.type == "cpu":
            unit = torch.repeat_interleave(self.run_unit, self.run_lengths, output_size=self.numel)
            self.scratch["unit"] = unit
        if unit is None:
            return torch.repeat_interleave(values[self.run_unit], self.run_lengths, output_size=self.numel)
        return torch.index_select(values, 0, unit, out=self.buffer("t", values.dtype))

    def split(self, flat: Tensor) -> tuple[Tensor, ...]:
        """A (E_total,) tensor's slice of each part, (E,) each."""
        return tuple(flat.narrow(0, at, n) for at, n in zip(self.offsets, self.sizes, strict=True))

    def buffer(self, name: str, dtype: torch.dtype, width: int = 1) -> Tensor:
        """A work buffer (E_total,) or (E_total, width), kept on the CPU when small, fresh
        otherwise (the caller must hold it for as long as it needs its contents)."""
        shape = (self.numel,) if width == 1 else (self.numel, width)
        buf = self.scratch.get(name)
        if buf is None or buf.dtype != dtype or buf.shape != shape:
            buf = torch.empty(shape, dtype=dtype, device=self.run_lengths.device)
            self._views.pop(name, None)
            if buf.device.type == "cpu" and buf.numel() <= SCRATCH_KEPT:
                self.scratch[name] = buf
        return buf

    def views(self, name: str, dtype: torch.dtype) -> tuple[Tensor, tuple[Tensor, ...]]:
        """`buffer` ``name`` (E_total,) and its slice of each part, (E,) each."""
        buf = self.buffer(name, dtype)
        cached = self._views.get(name)
        if cached is not None and cached[0] is buf:
            return cached
        out = (buf, self.split(buf))
        if self.scratch.get(name) is buf:  # views of a kept buffer only (they hold it)
            self._views[name] = out
        return out


def _flat_positions(shape: torch.Size, dim: int, pos: Tensor) -> Tensor:
    """Row-major positions of the elements `gather_rows` returns: (len(pos), rest) int64."""
    inner = 1
    for n in shape[dim + 1 :]:
        inner *= n
    rest = shape.numel() // max(shape[dim], 1)
    r = torch.arange(rest, device=pos.device)
    column = (r // inner) * (shape[dim] * inner) + r % inner  # (rest,) offset of each column
    return pos[:, None] * inner + column[None, :]


def _index_dtype(n: int) -> torch.dtype:
    """int32 for positions in a tensor of fewer than 2**31 elements, else int64: the positions
    of R's elements live for a whole pruning period, and int32 halves them."""
    return torch.int32 if n < 2**31 else torch.int64


def flat_rows(slices: Sequence[RedundantSlice], num_blocks: int) -> tuple[FlatBucket, ...]:
    """The owned elements of the redundant ``slices`` per tensor, bucketed by (device, dtype).

    Built once per pruning period, so that a step gathers, sums and updates the rows of R with
    a few operations per tensor and per bucket, never per slice.
    """
    # per tensor, in layout order: element positions and, per run, (length, unit, block)
    chunks: dict[int, list[tuple[Tensor, Tensor, Tensor, Tensor]]] = {}
    first: dict[int, SliceRef] = {}
    for rs in slices:
        ref = rs.ref
        positions = _flat_positions(ref.tensor.shape, ref.dim, rs.pos).reshape(rs.rows, -1)  # (k, w)
        block = torch.full_like(rs.unit, num_blocks) if rs.block is None else rs.block
        if rs.owned is None:
            lengths = torch.full_like(rs.unit, positions.shape[1])
            positions = positions.reshape(-1)
        else:  # keep the elements this slice owns; row by row, so runs stay contiguous
            keep = rs.owned.bool()
            lengths = keep.sum(1)
            positions = positions[keep]
        chunks.setdefault(id(ref.tensor), []).append((positions, lengths, rs.unit, block))
        first.setdefault(id(ref.tensor), ref)
    buckets: dict[tuple[torch.device, torch.dtype], list[tuple[int, FlatPart]]] = {}
    for key, parts in chunks.items():
        ref = first[key]
        index = torch.cat([c[0] for c in parts]).to(_index_dtype(ref.tensor.numel()))
        part = FlatPart(ref.tensor, index, ref.quant)
        buckets.setdefault((ref.tensor.device, ref.tensor.dtype), []).append((key, part))
    out = []
    for items in buckets.values():
        cols = [torch.cat([c[i] for key, _ in items for c in chunks[key]]) for i in range(1, 4)]
        parts_b = tuple(p for _, p in items)
        sizes = tuple(int(p.index.numel()) for p in parts_b)
        offsets = tuple(sum(sizes[:j]) for j in range(len(sizes)))
        out.append(FlatBucket(parts_b, offsets, sizes, *cols))
    return tuple(out)


def _ownership(parts: list[tuple[SliceRef, Tensor, int]]) -> list[Tensor | None]:
    """0/1 masks of the elements each slice of one tensor owns (the first slice holding it)."""
    tensor = parts[0][0].tensor
    claimed = torch.zeros(tensor.shape, dtype=torch.bool, device=tensor.device)
    out: list[Tensor | None] = []
    for ref, pos, k in parts:
        free = ~gather_rows(claimed, ref.dim, pos, k)  # (k, m*rest)
        out.append(None if bool(free.all()) else free.to(tensor.dtype))
        claimed.index_fill_(ref.dim, pos, True)
    return out


class UnitLayout:
    """Global unit ids of ``groups`` (the prunable ones) and their parameter slices.

    ``quant_of(tensor)`` returns the index of the tensor's weight quantizer or -1.
    """

    def __init__(self, groups: Sequence[PruneGroup], quant_of: Callable[[Tensor], int]) -> None:
        sizes = [g.size for g in groups]
        self.num_units = sum(sizes)
        self.num_groups = len(groups)
        self.unit_group = torch.repeat_interleave(
            torch.arange(len(groups), dtype=torch.long), torch.tensor(sizes, dtype=torch.long)
        )  # (N,) group of each unit
        self.length = torch.zeros(self.num_units, dtype=torch.long)  # len(x_j): elements per unit
        slices: list[SliceRef] = []
        offset = 0
        for g in groups:
            for s in g.slices:
                if not s.is_param:
                    continue  # buffers (running stats) are never scored, forgotten or zeroed
                index = s.index.to(device=s.tensor.device, dtype=torch.long)
                ref = SliceRef(s.tensor, s.name, s.dim, index, offset, quant_of(s.tensor))
                per_unit = index.shape[1] * (s.tensor.numel() // max(s.tensor.shape[s.dim], 1))
                self.length[offset : offset + g.size] += per_unit
                slices.append(ref)
            offset += g.size
        # slices of the same tensor next to each other (a stable sort by first appearance)
        first: dict[int, int] = {}
        for i, ref in enumerate(slices):
            first.setdefault(id(ref.tensor), i)
        self.slices = tuple(sorted(slices, key=lambda r: first[id(r.tensor)]))

    @torch.no_grad()
    def unit_stats(
        self, grad_of: Callable[[Tensor], Tensor | None], only: Callable[[SliceRef], bool] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(‖x_j‖², <x_j, g_j>, ‖g_j‖²) per unit (N,), float64, over all its parameter slices
        (or those ``only`` accepts)."""
        x_sq = torch.zeros(self.num_units, dtype=torch.float64)
        xg = torch.zeros_like(x_sq)
        g_sq = torch.zeros_like(x_sq)
        for ref in self.slices:
            if only is not None and not only(ref):
                continue
            span = slice(ref.offset, ref.offset + ref.size)
            pos = ref.index.reshape(-1)
            x = gather_rows(ref.tensor.detach(), ref.dim, pos, ref.size).double()  # (size, m*rest)
            x_sq[span] += x.pow(2).sum(1).cpu()
            grad = grad_of(ref.tensor)
            if grad is not None:
                g = gather_rows(grad, ref.dim, pos, ref.size).double()
                xg[span] += (x * g).sum(1).cpu()
                g_sq[span] += g.pow(2).sum(1).cpu()
        return x_sq, xg, g_sq

    def redundant(self, selected: Tensor, num_quantizers: int) -> RedundantRows:
        """The `RedundantRows` of the units where ``selected`` (N,) bool is True."""
        units = selected.nonzero().squeeze(1)  # (n_R,) global ids, ascending
        local = torch.full((self.num_units,), -1, dtype=torch.long)
        local[units] = torch.arange(units.numel())
        parts: list[tuple[SliceRef, Tensor, Tensor]] = []  # (slice, positions, local unit ids)
        by_tensor: dict[int, list[int]] = {}
        for ref in self.slices:
            ids = local[ref.offset : ref.offset + ref.size]  # (size,) local id or -1
            rows = (ids >= 0).nonzero().squeeze(1)  # (k,) selected rows of this slice
            if rows.numel():
                by_tensor.setdefault(id(ref.tensor), []).append(len(parts))
                device = ref.tensor.device
                parts.append((ref, ref.positions(rows.to(device)), ids[rows].to(device)))
        owned: list[Tensor | None] = [None] * len(parts)
        for idxs in by_tensor.values():
            if len(idxs) > 1:  # slices along different dims of one tensor meet: one owner each
                masks = _ownership([(parts[i][0], parts[i][1], parts[i][2].numel()) for i in idxs])
                for i, mask in zip(idxs, masks, strict=True):
                    owned[i] = mask
        n_layers = max(num_quantizers, 1)
        keys = [ids.cpu() * n_layers + ref.quant for ref, _, ids in parts if ref.quant >= 0]
        uniq = torch.unique(torch.cat(keys)) if keys else torch.zeros(0, dtype=torch.long)
        out = []
        for (ref, pos, ids), mask in zip(parts, owned, strict=True):
            block = None
            if ref.quant >= 0:
                block = torch.searchsorted(uniq, ids.cpu() * n_layers + ref.quant).to(ids.device)
            out.append(RedundantSlice(ref, pos, ids.numel(), ids, block, mask))
        flat = flat_rows(out, int(uniq.numel()))
        flat_of = {id(p.tensor): (b, j) for b, bucket in enumerate(flat) for j, p in enumerate(bucket.parts)}
        return RedundantRows(units, tuple(out), uniq // n_layers, uniq % n_layers, flat, flat_of)

    def zero_positions(self, units: Tensor) -> list[tuple[Tensor, int, Tensor]]:
        """(tensor, dim, positions) to fill with zeros for the global ``units`` (N,) bool mask."""
        out = []
        for ref in self.slices:
            rows = units[ref.offset : ref.offset + ref.size].nonzero().squeeze(1)
            if rows.numel():
                out.append((ref.tensor, ref.dim, ref.positions(rows.to(ref.tensor.device))))
        return out
