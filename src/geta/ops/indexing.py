"""Handlers of advanced indexing: ``x[idx]`` gathers rows, ``x[idx] = v`` writes them.

``aten.index(x, [None, idx, ...])`` takes index tensors for some dims (None: the whole dim).
When the indexed dims are consecutive (the common case: tokens routed to experts, rows picked
by a permutation), they are replaced in place by the index's shape and every other dim keeps
its labels; the indexed dims pick positions one by one, so their spaces are frozen. Boolean
masks and scattered index dims (which numpy rules move to the front) freeze the whole tensor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from geta.graph.context import Context, Labels
from geta.graph.space import Anon
from geta.ops.registry import register_op

aten = torch.ops.aten

__all__: list[str] = []


def _span(indices: Any) -> tuple[int, int] | None:
    """(first, stop) of the dims indexed by integer tensors, if they are consecutive."""
    used = []
    for k, i in enumerate(indices):
        if i is None:
            continue
        val = i.meta.get("val") if isinstance(i, fx.Node) else None
        if not isinstance(val, torch.Tensor) or val.dtype in (torch.bool, torch.uint8):
            return None  # a mask covers several dims at once
        used.append(k)
    if not used or used != list(range(used[0], used[-1] + 1)):
        return None
    return used[0], used[-1] + 1


@register_op(aten.index)
def index(ctx: Context, node: fx.Node) -> Labels:
    """``x[..., idx, ...]``: the indexed dims become the index's dims; the others keep labels."""
    lab = ctx.label_or_anon(node.args[0])
    out = ctx.shape(node)
    span = _span(node.args[1])
    if span is not None:
        first, stop = span
        picked = [Anon(n) for n in out[first : len(out) - (len(lab) - stop)]]  # the index's dims
        labels = lab[:first] + picked + lab[stop:]
        if [e.size for e in labels] == list(out):
            ctx.freeze(lab[first:stop], f"{node.target} picks channels at {node.name}")
            return labels
    ctx.freeze(lab, f"{node.target} indexes a tensor at {node.name}")
    return ctx.anon(out)


@register_op(aten.index_put, aten.index_put_)
def index_put(ctx: Context, node: fx.Node) -> Labels:
    """``x[..., idx, ...] = v``: indexed dims are frozen; v's trailing dims are x's channels."""
    lab = ctx.label_or_anon(node.args[0])
    values = ctx.label(node.args[2])
    span = _span(node.args[1])
    why = f"{node.target} writes single positions at {node.name}"
    if span is None:
        ctx.freeze(lab, why)
        ctx.freeze(values, why)
        return lab
    first, stop = span
    ctx.freeze(lab[first:stop], why)
    k = min(len(lab) - stop, len(values or []))
    if values is not None and k:  # v broadcasts against x's dims after the indexed ones
        tail = lab[len(lab) - k :]
        shape = tuple(e.size for e in tail)
        ctx.broadcast_labels([tail, values[len(values) - k :]], shape, f"{node.target} ({node.name})")
    return lab
