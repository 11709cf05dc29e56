"""Handler of scaled dot-product attention: heads are a channel space of their own.

``sdpa(q, k, v)`` with q: (..., Hq, L, E), k: (..., Hkv, S, E), v: (..., Hkv, S, Ev). The head
dims of q, k and v are one space, so head h is removed from the q/k/v projection rows and the
output projection columns together. With grouped-query attention (Hq = r * Hkv) the query
heads are ``Prod(kv_heads, r)``: the r query heads of one kv head go with it, and the r factor
is frozen. Dimensions inside a head (E, Ev) are frozen: every head must keep the same size and
the softmax scale depends on it.
"""

from __future__ import annotations

import torch
from torch import fx

from geta.graph.context import Context, Labels
from geta.graph.space import prod
from geta.ops.macs import ATTENTION as ATTENTION_MACS
from geta.ops.registry import register_op
from geta.ops.traits import ATTENTION

aten = torch.ops.aten

__all__: list[str] = []


@register_op(aten.scaled_dot_product_attention, macs=ATTENTION_MACS, product=ATTENTION)
def sdpa(ctx: Context, node: fx.Node) -> Labels:
    q, k, v = node.args[:3]
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    ql, kl, vl = (list(ctx.label(t) or ctx.anon(ctx.shape(t))) for t in (q, k, v))
    why = f"attention ({node.name})"
    ctx.unify(ql[-1], kl[-1], why)
    ctx.freeze([ql[-1], vl[-1]], f"dimension inside an attention head ({node.name})")
    if len(ql) >= 3:
        hq, hk = ql[-3], kl[-3]
        ctx.unify(kl[-3], vl[-3], why)
        if hq.size == hk.size:
            ctx.unify(hq, hk, why)
        elif hk.size and hq.size % hk.size == 0:
            # query heads of one kv head: Prod(kv_heads, r); the r factor cannot be pruned alone
            r = ctx.alg.new(hq.size // hk.size)
            ctx.freeze([r], f"query heads sharing one kv head (grouped-query {why})")
            ctx.unify(hq, prod(hk, r), f"grouped-query {why}")
        batch = ctx.broadcast_labels([ql[:-3], kl[:-3], vl[:-3]], ctx.shape(q)[:-3], why)
        heads = [hq]
    else:
        batch = ctx.broadcast_labels([ql[:-2], kl[:-2], vl[:-2]], ctx.shape(q)[:-2], why)
        heads = []
    scores = batch + heads + [ql[-2], kl[-2]]
    if ctx.is_tensor(mask):
        ctx.broadcast_labels(
            [scores, list(ctx.label(mask) or ctx.anon(ctx.shape(mask)))],
            tuple(e.size for e in scores),
            f"attention mask ({node.name})",
        )
    return batch + heads + [ql[-2], vl[-1]]
