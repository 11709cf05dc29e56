"""Channel spaces and the label algebra of tensor dimensions.

Every dimension of every tensor in the captured graph carries a *label* that says which channel
space(s) its positions belong to. A label is an expression:

- ``Space``: a set of ``size`` interchangeable channels (a union-find node; merged by
  element-wise ops such as residual adds);
- ``Anon(n)``: ``n`` positions with no channel meaning (batch, spatial, sequence, inputs);
- ``Sum(parts)``: the parts side by side (what ``cat`` builds; ``split`` refines a space into one);
- ``Prod(factors)``: a mixed-radix index, major factor first (``view(B, T, H, hd)`` refines a
  space of size H*hd into ``Prod(heads, head_dim)``; ``flatten(C, H, W)`` builds one).

A space can be *refined* into a Sum or Prod of fresh sub-spaces; every later look-up of the
space sees the refinement, so the layout learnt at one op (a head split) holds everywhere the
space appears (the weight rows of q_proj, its bias, the o_proj columns). Prune groups are the
unrefined root spaces; a unit of a group is one index of such a space.

Unifying two labels (same positions must belong to the same channels) merges spaces. A space
unified with ``Anon`` is *frozen*: its channels meet a tensor geta cannot slice.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

__all__ = ["Space", "Anon", "Sum", "Prod", "Expr", "SpaceAlgebra", "LayoutConflict"]

_ids = itertools.count()


class LayoutConflict(Exception):
    """Two labels describe the same positions with layouts that cannot be reconciled."""


class Space:
    """A union-find node for one channel space of ``size`` channels."""

    __slots__ = ("id", "size", "parent", "refinement", "frozen", "reason")

    def __init__(self, size: int) -> None:
        self.id = next(_ids)
        self.size = size
        self.parent: Space = self
        self.refinement: Sum | Prod | None = None  # set on roots only
        self.frozen = False
        self.reason: str | None = None

    def find(self) -> Space:
        root = self
        while root.parent is not root:
            root = root.parent
        node = self
        while node.parent is not root:  # path compression
            node.parent, node = root, node.parent
        return root

    def __repr__(self) -> str:
        return f"S{self.id}({self.size})"


@dataclass(frozen=True)
class Anon:
    size: int


@dataclass(frozen=True)
class Sum:
    parts: tuple[Expr, ...]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)


@dataclass(frozen=True)
class Prod:
    factors: tuple[Expr, ...]

    @property
    def size(self) -> int:
        n = 1
        for f in self.factors:
            n *= f.size
        return n


Expr = Space | Anon | Sum | Prod


def _make(kind: type, items: list[Expr]) -> Expr:
    """Normalised Sum/Prod: nested same-kind flattened, neutral items dropped, Anons fused."""
    flat: list[Expr] = []
    for it in items:
        flat.extend(
            it.parts
            if kind is Sum and isinstance(it, Sum)
            else it.factors
            if kind is Prod and isinstance(it, Prod)
            else (it,)
        )
    if kind is Prod:
        flat = [f for f in flat if f.size != 1]
    else:
        flat = [p for p in flat if p.size != 0]
    fused: list[Expr] = []
    for it in flat:
        if fused and isinstance(it, Anon) and isinstance(fused[-1], Anon):
            a = fused.pop().size
            fused.append(Anon(a * it.size if kind is Prod else a + it.size))
        else:
            fused.append(it)
    if not fused:
        return Anon(1 if kind is Prod else 0)
    if len(fused) == 1:
        return fused[0]
    return kind(tuple(fused))


def prod(*items: Expr) -> Expr:
    return _make(Prod, list(items))


def concat(*items: Expr) -> Expr:
    return _make(Sum, list(items))


class SpaceAlgebra:
    """Creates, merges, refines and freezes spaces; resolves labels to their current layout."""

    def __init__(self) -> None:
        self.spaces: list[Space] = []

    def new(self, size: int) -> Space:
        s = Space(size)
        self.spaces.append(s)
        return s

    # -- resolution -----------------------------------------------------------------------
    def resolve(self, e: Expr) -> Expr:
        """The label with every space replaced by its root and every refinement expanded."""
        if isinstance(e, Space):
            root = e.find()
            return root if root.refinement is None else self.resolve(root.refinement)
        if isinstance(e, Anon):
            return e
        if isinstance(e, Sum):
            return _make(Sum, [self.resolve(p) for p in e.parts])
        return _make(Prod, [self.resolve(f) for f in e.factors])

    def leaves(self, e: Expr) -> list[Space]:
        """The unrefined root spaces occurring in ``e``."""
        r = self.resolve(e)
        if isinstance(r, Space):
            return [r]
        if isinstance(r, Anon):
            return []
        items = r.parts if isinstance(r, Sum) else r.factors
        return [s for it in items for s in self.leaves(it)]

    # -- freezing -------------------------------------------------------------------------
    def freeze(self, e: Expr, reason: str) -> None:
        for s in self.leaves(e):
            if not s.frozen:
                s.frozen, s.reason = True, reason

    # -- refinement -----------------------------------------------------------------------
    def refine(self, s: Space, kind: type, sizes: list[int]) -> Expr:
        """Refine root space ``s`` into fresh children of the given sizes; returns the new label."""
        children = [self.new(n) for n in sizes]
        for c in children:
            c.frozen, c.reason = s.frozen, s.reason
        s.refinement = kind(tuple(children))  # type: ignore[assignment]
        return s.refinement  # type: ignore[return-value]

    def split_item(self, item: Expr, kind: type, first: int) -> tuple[Expr, Expr]:
        """Split ``item`` (a Space or Anon, or a Sum for kind Sum) into (first, rest) parts."""
        rest = item.size // first if kind is Prod else item.size - first
        if isinstance(item, Anon):
            return Anon(first), Anon(rest)
        if isinstance(item, Space):
            r = self.refine(item.find(), kind, [first, rest])
            items = r.parts if isinstance(r, Sum) else r.factors  # type: ignore[union-attr]
            return items[0], items[1]
        raise LayoutConflict(f"cannot split {item} as a {kind.__name__}")

    # -- unification ----------------------------------------------------------------------
    def unify(self, a: Expr, b: Expr, reason: str) -> None:
        """Make ``a`` and ``b`` the same channels; freeze what cannot be reconciled."""
        try:
            self._unify(a, b, reason)
        except LayoutConflict as exc:
            why = f"incompatible channel layouts at {reason} ({exc})"
            self.freeze(a, why)
            self.freeze(b, why)

    def _unify(self, a: Expr, b: Expr, reason: str) -> None:
        a, b = self.resolve(a), self.resolve(b)
        if a.size != b.size:
            raise LayoutConflict(f"sizes {a.size} != {b.size}")
        if isinstance(a, Anon) or isinstance(b, Anon):
            if not (isinstance(a, Anon) and isinstance(b, Anon)):
                self.freeze(b if isinstance(a, Anon) else a, f"meets an unsliceable tensor at {reason}")
            return
        if isinstance(a, Space) and isinstance(b, Space):
            self._union(a, b)
            return
        if isinstance(a, Space) or isinstance(b, Space):
            s, other = (a, b) if isinstance(a, Space) else (b, a)
            items = other.parts if isinstance(other, Sum) else other.factors  # type: ignore[union-attr]
            refined = self.refine(s, type(other), [it.size for it in items])
            self._unify(refined, other, reason)
            return
        if type(a) is not type(b):
            raise LayoutConflict("a concatenation meets a reshape")
        kind = type(a)
        xs = list(a.parts if kind is Sum else a.factors)  # type: ignore[union-attr]
        ys = list(b.parts if kind is Sum else b.factors)  # type: ignore[union-attr]
        self._align(kind, xs, ys, reason)

    def _align(self, kind: type, xs: list[Expr], ys: list[Expr], reason: str) -> None:
        """Unify two Sum (or Prod) item lists of equal total size, splitting items at boundaries."""
        while xs and ys:
            x, y = xs.pop(0), ys.pop(0)
            if x.size == y.size:
                self._unify(x, y, reason)
                continue
            small, big, big_list = (x, y, ys) if x.size < y.size else (y, x, xs)
            if kind is Prod and big.size % small.size:
                raise LayoutConflict(f"factor {small.size} does not divide {big.size}")
            big = self.resolve(big)
            if isinstance(big, kind):
                items = list(big.parts if kind is Sum else big.factors)  # type: ignore[union-attr]
                big_list[:0] = items
                (xs if big_list is ys else ys).insert(0, small)
                continue
            head, rest = self.split_item(big, kind, small.size)
            self._unify(small, head, reason)
            big_list.insert(0, rest)
        if xs or ys:
            raise LayoutConflict("layouts of different lengths")

    def _union(self, a: Space, b: Space) -> None:
        a, b = a.find(), b.find()
        if a is b:
            return
        frozen = a.frozen or b.frozen
        reason = a.reason if a.frozen else b.reason
        b.parent = a
        a.frozen, a.reason = frozen, reason

    # -- reshapes -------------------------------------------------------------------------
    def split_to(self, e: Expr, sizes: list[int]) -> list[Expr]:
        """Split the label ``e`` of one flattened dimension into consecutive dims of ``sizes``."""
        items = self._factors(e)
        out: list[Expr] = []
        for n in sizes:
            taken: list[Expr] = []
            need = n
            while need > 1:
                if not items:
                    raise LayoutConflict("reshape sizes do not match")
                it = items.pop(0)
                if it.size <= need:
                    if need % it.size:
                        raise LayoutConflict(f"reshape boundary cuts a factor of {it.size}")
                    taken.append(it)
                    need //= it.size
                else:
                    if it.size % need:
                        raise LayoutConflict(f"reshape boundary cuts a factor of {it.size}")
                    head, rest = self.split_item(it, Prod, need)
                    taken.append(head)
                    items.insert(0, rest)
                    need = 1
            out.append(_make(Prod, taken) if n != 1 else Anon(1))
        return out

    def _factors(self, e: Expr) -> list[Expr]:
        r = self.resolve(e)
        return list(r.factors) if isinstance(r, Prod) else [r]

    # -- positions ------------------------------------------------------------------------
    def positions(self, e: Expr) -> dict[Space, torch.Tensor]:
        """For each leaf space in ``e``: int64 (space.size, m) positions of each of its units."""
        out: dict[Space, torch.Tensor] = {}
        self._positions(self.resolve(e), torch.arange(e.size).reshape(e.size, 1), out)
        return out

    def _positions(self, e: Expr, pos: torch.Tensor, out: dict[Space, torch.Tensor]) -> None:
        # pos: (e.size, R) positions along the tensor dim covered by each index of e
        if isinstance(e, Space):
            prev = out.get(e)
            out[e] = pos if prev is None else torch.cat([prev, pos], dim=1)
        elif isinstance(e, Sum):
            start = 0
            for p in e.parts:
                self._positions(p, pos[start : start + p.size], out)
                start += p.size
        elif isinstance(e, Prod):
            sizes = [f.size for f in e.factors]
            grid = pos.reshape(*sizes, pos.shape[1])  # (n1, ..., nk, R)
            for i, f in enumerate(e.factors):
                self._positions(f, grid.movedim(i, 0).reshape(f.size, -1), out)

    def kept(self, e: Expr, removed: dict[Space, torch.Tensor]) -> int:
        """How many positions of ``e`` survive when the given units of each space are removed."""
        alive = torch.ones(e.size, dtype=torch.bool)
        for space, pos in self.positions(e).items():
            units = removed.get(space)
            if units is not None and units.numel():
                alive[pos[units].reshape(-1)] = False
        return int(alive.sum())
