"""Handler of grouped matmuls: the expert layers of a Mixture-of-Experts block.

A Mixture-of-Experts block keeps its experts' weights stacked in 3-D parameters, e.g.
``gate_up_proj: (E, 2*I, H)`` and ``down_proj: (E, H, I)`` for E experts of I hidden units. The
tokens routed to each expert are sorted into contiguous row blocks and multiplied in one call::

    grouped_mm(x, w, offs)   x: (S, K) token rows, w: (E, K, N), offs: (E,) block ends -> (S, N)

To pruning this is a linear layer whose weight has a leading expert dim: K is contracted with
the input's channels (consumer side), N carries the output channels (producer side). A unit of K
or N is the same index in every expert, so a pruned hidden unit leaves all experts at once.
The expert dim itself is frozen: removing a whole expert is not zero-invariant (a zeroed router
row gives logit 0, not minus infinity) and is not offered.

Torch's grouped_mm kernels need the strides of x and w to be multiples of 16 bytes, so those
units are pruned in aligned blocks: a dim of size n is refined into ``Prod(n / b, b)`` with the
inner factor frozen, ``b = gcd(n, 16 bytes / element size)`` (4 units in float32, 8 in
bfloat16). K is the row stride of x, so it is always aligned; N only when w stores it innermost
(``(E, K, N)`` row-major; transformers stores ``(E, N, K)`` and passes a transposed view).

Transformers' CPU fallback of this op (``torch.ops.transformers.grouped_mm_fallback``, same
signature) is registered with this handler by `geta.ops.hf` once transformers is loaded.
"""

from __future__ import annotations

import math

import torch
from torch import fx

from geta.graph.context import Context, Labels
from geta.graph.space import Expr, prod
from geta.ops.registry import register_op

aten = torch.ops.aten

__all__ = ["grouped_mm"]


@register_op(aten._grouped_mm)
def grouped_mm(ctx: Context, node: fx.Node) -> Labels:
    """``(S, K) x (E, K, N) -> (S, N)`` with stacked expert weights; other layouts freeze."""
    x, w = node.args[0], node.args[1]
    xl, wl = ctx.label_or_anon(x), ctx.label_or_anon(w)
    out = ctx.shape(node)
    if len(xl) != 2 or len(wl) != 3 or len(out) != 2 or not ctx.is_static(w):
        ctx.freeze(xl + wl, f"{node.target}: only token rows x stacked expert weights are understood")
        return ctx.anon(out)
    why = f"{node.target} ({node.name})"
    ctx.unify(xl[1], wl[1], why)  # K: input channels = the experts' input units
    val = node.args[1].meta["val"]  # the weight as the kernel sees it: sizes, strides, dtype
    aligned = [wl[1], wl[2]] if val.stride(-1) == 1 else [wl[1]]
    for e in aligned:
        _align(ctx, e, val.element_size(), f"16-byte aligned strides of {node.target} ({node.name})")
    ctx.freeze([wl[0]], f"the expert dimension at {node.name} (whole experts are not removed)")
    bias = node.args[3] if len(node.args) > 3 else node.kwargs.get("bias")
    if ctx.is_tensor(bias):  # (E, N): one bias row per expert
        bl = ctx.label_or_anon(bias)
        ctx.unify(bl[-1], wl[2], why)
        ctx.freeze(bl[:-1], f"the expert dimension at {node.name} (whole experts are not removed)")
    return [xl[0], wl[2]]  # (S, N): N carries the experts' output units


def _align(ctx: Context, e: Expr, itemsize: int, why: str) -> None:
    """Prune ``e`` in blocks whose bytes are a multiple of 16: refine it, freeze the block."""
    if all(s.frozen for s in ctx.alg.leaves(e)):
        return  # nothing of it will be pruned (e.g. a residual stream behind a norm)
    block = math.gcd(e.size, max(1, 16 // itemsize))
    if block > 1:
        inner = ctx.alg.new(block)
        ctx.freeze([inner], why)
        ctx.unify(e, prod(ctx.alg.new(e.size // block), inner), why)
