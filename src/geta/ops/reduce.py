"""Handlers of reductions, softmax and pooling.

Reducing over a channel dimension mixes channels (removing one changes a mean, a max, a
softmax denominator): those spaces are frozen. Reducing over other dims (global average
pooling over H, W) keeps the channel labels. Pooling ops act on the trailing spatial dims only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from geta.graph.context import Context, Labels
from geta.graph.space import Anon, Expr
from geta.ops.registry import register_op
from geta.ops.traits import Trait

aten = torch.ops.aten

__all__: list[str] = []


def _dims(arg: Any, ndim: int) -> list[int]:
    if arg is None:
        return list(range(ndim))
    dims = [arg] if isinstance(arg, int) else list(arg)
    if not dims:
        return list(range(ndim))
    return [d + ndim if d < 0 else d for d in dims]


def _dim_arg(node: fx.Node, pos: int, default: Any) -> Any:
    """The ``dim`` argument of ``node``: by keyword, else at ``args[pos]`` (a bool there is not one)."""
    if "dim" in node.kwargs:
        return node.kwargs["dim"]
    if len(node.args) > pos and not isinstance(node.args[pos], bool):
        return node.args[pos]
    return default


def _kept(lab: list[Expr], dims: list[int], shape: tuple[int, ...]) -> list[Expr]:
    """Labels of a reduction's output: reduced dims dropped, or kept (keepdim, topk) unlabelled."""
    if len(shape) == len(lab):
        return [Anon(shape[k]) if k in dims else e for k, e in enumerate(lab)]
    return [e for k, e in enumerate(lab) if k not in dims]


def _reduce(ctx: Context, node: fx.Node, dims: list[int]) -> Labels:
    lab = ctx.label_or_anon(node.args[0])
    for d in dims:
        ctx.freeze([lab[d]], f"{node.target} reduces over channels at {node.name}")
    out_shape = ctx.shape(node)
    return _fit(ctx, _kept(lab, dims, out_shape), out_shape, node)


def _fit(ctx: Context, lab: list[Expr], out_shape: tuple[int, ...], node: fx.Node) -> Labels:
    if [e.size for e in lab] == list(out_shape):
        return lab
    ctx.freeze(lab, f"unexpected shape at {node.name}")
    return ctx.anon(out_shape)


@register_op(
    aten.sum,
    aten.amax,
    aten.amin,
    aten.prod,
    aten.any,
    aten.all,
    aten.var,
    aten.std,
    aten.logsumexp,
    aten.argmax,
    aten.argmin,
    aten.nansum,
    aten.count_nonzero,
    aten.linalg_vector_norm,
    aten.norm,
)
def reduction(ctx: Context, node: fx.Node) -> Labels:
    ndim = len(ctx.shape(node.args[0]))
    arg = _dim_arg(node, 1, None)
    if node.target in (aten.norm.ScalarOpt_dim, aten.linalg_vector_norm.default):
        arg = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
    if isinstance(arg, (int, float)) and node.target in (aten.norm.Scalar,):
        arg = None
    if node.target in (aten.var.correction, aten.std.correction) and len(node.args) < 2:
        arg = node.kwargs.get("dim")
    return _reduce(ctx, node, _dims(arg, ndim))


register_op(aten.mean, traits={Trait.KEEPS_SIGN})(reduction)  # a mean of non-negatives


# Where the ``dim`` argument of a (values, indices) op sits, and its default (None: all dims).
# topk and kthvalue take k before dim; sort.stable takes dim by keyword only.
_PAIR_DIM: dict[Any, tuple[int, Any]] = {
    aten.max: (1, None),
    aten.min: (1, None),
    aten.median: (1, None),
    aten.var_mean: (1, None),
    aten.std_mean: (1, None),
    aten.mode: (1, -1),
    aten.sort: (1, -1),
    aten.topk: (2, -1),
    aten.kthvalue: (2, -1),
}


@register_op(*_PAIR_DIM)
def reduction_pair(ctx: Context, node: fx.Node) -> Labels:
    """Ops returning (values, indices) along ``dim``, or one tensor when they reduce everything.

    Channels along ``dim`` are compared or sorted against each other: that space is frozen.
    The other dims keep their labels (a top-k over the sequence keeps the channels).
    """
    lab = ctx.label_or_anon(node.args[0])
    pos, default = _PAIR_DIM[node.target.overloadpacket]
    dims = [d for d in _dims(_dim_arg(node, pos, default), len(lab)) if 0 <= d < len(lab)]
    for d in dims:
        ctx.freeze([lab[d]], f"{node.target} reduces over channels at {node.name}")
    val = node.meta.get("val")
    vals = list(val) if isinstance(val, (tuple, list)) else [val]
    outs = []
    for v in vals:
        shape = tuple(int(s) for s in v.shape)
        outs.append(_fit(ctx, _kept(lab, dims, shape), shape, node))
    return tuple(outs) if isinstance(val, (tuple, list)) else outs[0]


@register_op(aten.cumsum, aten.cumprod, aten.argsort)
def along_dim(ctx: Context, node: fx.Node) -> Labels:
    """Same shape, but channels along ``dim`` are mixed (softmax denominator, running sums)."""
    lab = ctx.label_or_anon(node.args[0])
    d = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", -1)
    d = d + len(lab) if d < 0 else d
    ctx.freeze([lab[d]], f"{node.target} mixes channels along dim {d} at {node.name}")
    return lab


register_op(aten.softmax, aten._softmax, aten._safe_softmax, traits={Trait.SOFTMAX, Trait.NONNEGATIVE})(
    along_dim
)
register_op(aten.log_softmax, aten._log_softmax, traits={Trait.SOFTMAX})(along_dim)


@register_op(aten.histc, aten.bincount)
def histogram(ctx: Context, node: fx.Node) -> Labels:
    """Counts over every element: all input channels are mixed; the bins have no channel meaning."""
    why = f"{node.target} counts over channels at {node.name}"
    for a in node.all_input_nodes:  # the counted tensor (and bincount's weights)
        ctx.freeze(ctx.label(a), why)
    return ctx.anon(ctx.shape(node))


@register_op(aten.diff)
def difference(ctx: Context, node: fx.Node) -> Labels:
    """``x[..., 1:] - x[..., :-1]`` along ``dim``: neighbouring channels there are mixed."""
    lab = ctx.label_or_anon(node.args[0])
    out = ctx.shape(node)
    why = f"{node.target} mixes neighbouring positions at {node.name}"
    dims = [d for d in _dims(_dim_arg(node, 2, -1), len(lab)) if 0 <= d < len(lab)]
    for d in dims:
        ctx.freeze([lab[d]], why)
    for extra in list(node.args[3:]) + [node.kwargs.get("prepend"), node.kwargs.get("append")]:
        ctx.freeze(ctx.label(extra), why)  # tensors concatenated along dim before differencing
    return _fit(ctx, _kept(lab, dims, out), out, node)


# Pools of non-negative values are non-negative (their sign is looked through).
_SIGN_KEEPING_POOL = {
    aten.adaptive_avg_pool1d: 1,
    aten.adaptive_avg_pool2d: 2,
    aten.adaptive_avg_pool3d: 3,
    aten.avg_pool1d: 1,
    aten.avg_pool2d: 2,
    aten.avg_pool3d: 3,
    aten.max_pool1d: 1,
    aten.max_pool2d: 2,
    aten.max_pool3d: 3,
}
_POOL = {
    **_SIGN_KEEPING_POOL,
    aten.max_pool2d_with_indices: 2,
    aten.max_pool3d_with_indices: 3,
    aten.adaptive_max_pool1d: 1,
    aten.adaptive_max_pool2d: 2,
    aten.adaptive_max_pool3d: 3,
    aten.upsample_nearest1d: 1,
    aten.upsample_nearest2d: 2,
    aten.upsample_nearest3d: 3,
    aten.upsample_bilinear2d: 2,
    aten.upsample_linear1d: 1,
    aten.upsample_bicubic2d: 2,
    aten.upsample_trilinear3d: 3,
    aten._adaptive_avg_pool2d: 2,
}


@register_op(*(op for op in _POOL if op not in _SIGN_KEEPING_POOL))
def pool(ctx: Context, node: fx.Node) -> Labels:
    """Spatial pooling/resampling: leading (batch, channel) dims keep labels."""
    k = _POOL[node.target.overloadpacket]
    lab = ctx.label_or_anon(node.args[0])
    val = node.meta.get("val")
    lead = lab[: len(lab) - k]

    def one(shape: tuple[int, ...]) -> list[Expr]:
        return lead + [Anon(n) for n in shape[len(lead) :]]

    if isinstance(val, (tuple, list)):
        return tuple(one(tuple(int(s) for s in v.shape)) for v in val)
    return one(ctx.shape(node))


register_op(*_SIGN_KEEPING_POOL, traits={Trait.KEEPS_SIGN})(pool)
