"""Handlers of shape ops: views, permutes, concat and split move channel labels around.

- ``view``/``reshape``/``flatten``: dims are matched in blocks of equal size products; a block's
  labels are multiplied into one mixed-radix label and cut at the output sizes (a head split
  refines a space into ``Prod(heads, head_dim)``; a flatten into a linear makes
  ``Prod(channels, H*W)``; a channel shuffle reorders factors).
- ``cat`` builds a ``Sum``; ``split``/``chunk``/``slice`` refine a space into one.
- Traits (`geta.ops.traits`): views, permutes and expands only rearrange (``RESHAPES``);
  splits, slices, ``unbind`` and ``select`` return a part (``PART``); ``cat`` keeps the sign.
- Picking single channels (``select``, ``index_select``, ``gather`` on a channel dim) cannot be
  followed: those spaces are frozen (``x[idx]`` indexing: `geta.ops.indexing`).
"""

from __future__ import annotations

import torch
from torch import fx

from geta.graph.context import Context, Labels
from geta.graph.space import Anon, Expr, LayoutConflict, Sum, concat, prod
from geta.ops.registry import register_op
from geta.ops.traits import Trait

aten = torch.ops.aten

__all__ = ["reshape_labels"]

# Ops that only reshape: their labels come from `reshape_labels`.
_RESHAPES = (
    aten.view,
    aten._unsafe_view,
    aten.reshape,
    aten.flatten,
    aten.unflatten,
    aten.squeeze,
    aten.squeeze_,
    aten.unsqueeze,
    aten.unsqueeze_,
    aten.view_as,
    aten.reshape_as,
    aten.view_copy,
    aten.alias_copy,
)


def _dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def reshape_labels(ctx: Context, lab: list[Expr], out_shape: tuple[int, ...], why: str) -> list[Expr]:
    """Labels of ``x.view(out_shape)`` given the labels ``lab`` of ``x``."""
    in_shape = [e.size for e in lab]
    out: list[Expr] = []
    i = j = 0
    while i < len(in_shape) or j < len(out_shape):
        # skip size-1 dims on either side (they carry no channels)
        if i < len(in_shape) and in_shape[i] == 1:
            i += 1
            continue
        if j < len(out_shape) and out_shape[j] == 1:
            out.append(Anon(1))
            j += 1
            continue
        if i >= len(in_shape) or j >= len(out_shape):
            break
        bi, bj = [i], [j]
        pi, pj = in_shape[i], out_shape[j]
        while pi != pj:
            if pi < pj:
                i += 1
                bi.append(i)
                pi *= in_shape[i]
            else:
                j += 1
                bj.append(j)
                pj *= out_shape[j]
        i, j = i + 1, j + 1
        block = prod(*[lab[k] for k in bi])
        sizes = [out_shape[k] for k in bj]
        try:
            out.extend(ctx.alg.split_to(block, sizes))
        except LayoutConflict as exc:
            ctx.alg.freeze(block, f"a reshape at {why} cuts a channel ({exc})")
            out.extend(Anon(n) for n in sizes)
    return out


@register_op(*_RESHAPES, traits={Trait.RESHAPES})
def view(ctx: Context, node: fx.Node) -> Labels:
    return reshape_labels(ctx, ctx.label_or_anon(node.args[0]), ctx.shape(node), node.name)


@register_op(aten.permute, aten.permute_copy, traits={Trait.RESHAPES})
def permute(ctx: Context, node: fx.Node) -> Labels:
    lab = ctx.label_or_anon(node.args[0])
    dims = [_dim(d, len(lab)) for d in node.args[1]]
    return [lab[d] for d in dims]


@register_op(aten.transpose, aten.transpose_, aten.swapaxes, aten.swapdims, traits={Trait.RESHAPES})
def transpose(ctx: Context, node: fx.Node) -> Labels:
    lab = ctx.label_or_anon(node.args[0])
    a, b = (_dim(d, len(lab)) for d in node.args[1:3])
    lab[a], lab[b] = lab[b], lab[a]
    return lab


@register_op(aten.t, aten.numpy_T, traits={Trait.RESHAPES})
def t(ctx: Context, node: fx.Node) -> Labels:
    return list(reversed(ctx.label_or_anon(node.args[0])))


@register_op(aten.movedim, traits={Trait.RESHAPES})
def movedim(ctx: Context, node: fx.Node) -> Labels:
    lab = ctx.label_or_anon(node.args[0])
    src, dst = node.args[1], node.args[2]
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    n = len(lab)
    src, dst = [_dim(d, n) for d in src], [_dim(d, n) for d in dst]
    rest = [lab[d] for d in range(n) if d not in src]
    out: list[Expr | None] = [None] * n
    for s, d in zip(src, dst):
        out[d] = lab[s]
    it = iter(rest)
    return [e if e is not None else next(it) for e in out]


@register_op(aten.expand, aten.expand_copy, traits={Trait.RESHAPES})
def expand(ctx: Context, node: fx.Node) -> Labels:
    lab = ctx.label_or_anon(node.args[0])
    out = ctx.shape(node)
    offset = len(out) - len(lab)
    return [
        Anon(n) if k < offset or lab[k - offset].size != n else lab[k - offset] for k, n in enumerate(out)
    ]


@register_op(aten.repeat)
def repeat(ctx: Context, node: fx.Node) -> Labels:
    lab = ctx.label_or_anon(node.args[0])
    reps = list(node.args[1])
    lab = ctx.anon((1,) * (len(reps) - len(lab))) + lab
    return [prod(Anon(r), e) for r, e in zip(reps, lab)]


@register_op(aten.repeat_interleave.self_int, aten.repeat_interleave.self_Tensor)
def repeat_interleave(ctx: Context, node: fx.Node) -> Labels:
    """Each position along ``dim`` repeated r times in a row: ``Prod(label, r)`` (r minor)."""
    lab = ctx.label_or_anon(node.args[0])
    out = ctx.shape(node)
    reps = node.args[1]
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
    if isinstance(reps, int) and isinstance(dim, int) and lab:
        d = _dim(dim, len(lab))
        lab[d] = prod(lab[d], Anon(reps))
        return lab
    ctx.freeze(lab, f"{node.target} repeats positions unevenly at {node.name}")
    return ctx.anon(out)


@register_op(aten.cat, aten.concat, aten.concatenate, traits={Trait.KEEPS_SIGN})
def cat(ctx: Context, node: fx.Node) -> Labels:
    tensors = [a for a in node.args[0] if ctx.shape(a) != (0,)]
    out_shape = ctx.shape(node)
    d = _dim(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0), len(out_shape))
    labs = [ctx.label_or_anon(a) for a in tensors]
    out = list(labs[0])
    for lab in labs[1:]:
        for k in range(len(out)):
            if k != d and lab[k].size == out[k].size and out[k].size > 1:
                ctx.unify(out[k], lab[k], f"cat ({node.name})")
    out[d] = concat(*[lab[d] for lab in labs])
    return out


@register_op(aten.stack)
def stack(ctx: Context, node: fx.Node) -> Labels:
    tensors = list(node.args[0])
    out_shape = ctx.shape(node)
    d = _dim(node.args[1] if len(node.args) > 1 else 0, len(out_shape))
    first = ctx.broadcast(tensors, out_shape[:d] + out_shape[d + 1 :], f"stack ({node.name})")
    return first[:d] + [Anon(out_shape[d])] + first[d:]


def _split(ctx: Context, node: fx.Node, sizes: list[int], d: int) -> Labels:
    lab = ctx.label_or_anon(node.args[0])
    e = lab[d]
    parts: list[Expr]
    try:
        parts = _cut(ctx, e, sizes)
    except LayoutConflict as exc:
        ctx.alg.freeze(e, f"split at {node.name} cuts a channel ({exc})")
        parts = [Anon(n) for n in sizes]
    return tuple(lab[:d] + [p] + lab[d + 1 :] for p in parts)


def _cut(ctx: Context, e: Expr, sizes: list[int]) -> list[Expr]:
    """Cut label ``e`` into consecutive parts of the given sizes (refining spaces as Sums)."""
    items = list(_parts(ctx, e))
    out: list[Expr] = []
    for n in sizes:
        taken: list[Expr] = []
        need = n
        while need > 0:
            it = items.pop(0)
            if it.size <= need:
                taken.append(it)
                need -= it.size
            else:
                head, rest = ctx.alg.split_item(it, Sum, need)
                taken.append(head)
                items.insert(0, rest)
                need = 0
        out.append(concat(*taken) if taken else Anon(0))
    return out


def _parts(ctx: Context, e: Expr) -> list[Expr]:
    r = ctx.alg.resolve(e)
    return list(r.parts) if isinstance(r, Sum) else [r]


@register_op(
    aten.split, aten.split_with_sizes, aten.chunk, aten.unsafe_split, aten.tensor_split, traits={Trait.PART}
)
def split(ctx: Context, node: fx.Node) -> Labels:
    val = node.meta["val"]
    shape = ctx.shape(node.args[0])
    dim_arg = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    d = _dim(dim_arg, len(shape))
    sizes = [int(v.shape[d]) for v in val]
    return _split(ctx, node, sizes, d)


@register_op(aten.unbind, traits={Trait.PART})
def unbind(ctx: Context, node: fx.Node) -> Labels:
    lab = ctx.label_or_anon(node.args[0])
    d = _dim(node.args[1] if len(node.args) > 1 else 0, len(lab))
    ctx.freeze([lab[d]], f"unbind of a channel dimension at {node.name}")
    rest = lab[:d] + lab[d + 1 :]
    return tuple(list(rest) for _ in range(lab[d].size))


@register_op(aten.slice, aten.narrow, aten.slice_copy, traits={Trait.PART})
def slice_(ctx: Context, node: fx.Node) -> Labels:
    lab = ctx.label_or_anon(node.args[0])
    d = _dim(node.args[1] if len(node.args) > 1 else 0, len(lab))
    n, out = lab[d].size, ctx.shape(node)[d]
    if out == n:
        return lab
    if node.target in (aten.narrow.default,):
        start = node.args[2]
        step = 1
    else:
        start = node.args[2] if len(node.args) > 2 and node.args[2] is not None else 0
        step = node.args[4] if len(node.args) > 4 else 1
    start = max(0, min(n, start + n if start < 0 else start))
    if step != 1 or not isinstance(start, int):
        ctx.freeze([lab[d]], f"strided slice of a channel dimension at {node.name}")
        lab[d] = Anon(out)
        return lab
    parts = _split(ctx, node, [start, out, n - start - out], d)
    return parts[1]  # type: ignore[return-value,index]


@register_op(aten.flip, aten.roll)
def reorder(ctx: Context, node: fx.Node) -> Labels:
    """``flip(x, dims)``, ``roll(x, shifts, dims)``: positions move along ``dims`` only.

    Those dims are reordered (their spaces frozen: removing a position would move the others);
    every other dim keeps its labels, so Swin's cyclic shift over (H, W) leaves the channels
    alone. ``roll`` without dims shifts the flattened tensor: everything is frozen.
    """
    lab = ctx.label_or_anon(node.args[0])
    dims_arg = node.args[1] if node.target.overloadpacket is aten.flip else _roll_dims(node)
    why = f"{node.target} reorders positions along a channel dimension at {node.name}"
    if not dims_arg or [e.size for e in lab] != list(ctx.shape(node)):
        ctx.freeze(lab, why)
        return ctx.anon(ctx.shape(node))
    dims = {_dim(d, len(lab)) for d in ([dims_arg] if isinstance(dims_arg, int) else dims_arg)}
    ctx.freeze([lab[d] for d in dims], why)
    return [Anon(e.size) if k in dims else e for k, e in enumerate(lab)]


def _roll_dims(node: fx.Node) -> object:
    return node.args[2] if len(node.args) > 2 else node.kwargs.get("dims", [])


@register_op(aten.index_select, aten.gather, aten.take_along_dim)
def pick(ctx: Context, node: fx.Node) -> Labels:
    """Channel picking: the picked dim's spaces are frozen; other dims keep labels."""
    lab = ctx.label_or_anon(node.args[0])
    out = ctx.shape(node)
    if (
        node.target in (aten.select.int, aten.index_select.default, aten.gather.default)
        and len(node.args) > 1
        and isinstance(node.args[1], int)
    ):
        d = _dim(node.args[1], len(lab))
        ctx.freeze([lab[d]], f"{node.target} picks channels at {node.name}")
        rest = lab[:d] + ([Anon(out[d])] if len(out) == len(lab) else []) + lab[d + 1 :]
        if [e.size for e in rest] == list(out):
            return rest
    ctx.freeze(lab, f"{node.target} indexes a tensor at {node.name}")
    return ctx.anon(out)


register_op(aten.select, traits={Trait.PART})(pick)  # one channel: a part of the input


@register_op(aten.constant_pad_nd, aten.pad)
def pad(ctx: Context, node: fx.Node) -> Labels:
    lab = ctx.label_or_anon(node.args[0])
    pads = list(node.args[1])
    out = ctx.shape(node)
    for k in range(len(pads) // 2):
        d = len(lab) - 1 - k
        if pads[2 * k] or pads[2 * k + 1]:
            ctx.freeze([lab[d]], f"padding of a channel dimension at {node.name}")
            lab[d] = Anon(out[d])
    return lab
