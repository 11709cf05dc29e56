"""Handlers of parametrised layers: linear, convolutions, matmuls, norms, embeddings.

A layer's weight is an ordinary tensor input whose dims carry spaces (every parameter dim
starts as a fresh space): ``linear(x, W, b)`` unifies the input features of ``x`` with the
columns of ``W`` (consumer side) and gives the output the rows of ``W`` (producer side), with
``b`` on the same rows. Grouped convolutions split the channel spaces into
``Prod(groups, per_group)`` so that whole groups are removed together (``groups`` shrinks).
Norms that mix statistics across their channels freeze them (docs/method.md §2.6).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from geta.graph.context import Context, Labels
from geta.graph.space import Anon, Expr, prod
from geta.ops import macs
from geta.ops.registry import register_op
from geta.ops.traits import MATMUL

aten = torch.ops.aten

__all__: list[str] = []


def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


@register_op(aten.linear, macs=macs.LINEAR)
def linear(ctx: Context, node: fx.Node) -> Labels:
    x, w, b = node.args[0], node.args[1], _arg(node, 2, "bias")
    xl, wl = ctx.label_or_anon(x), ctx.label_or_anon(w)  # x: (..., in)   w: (out, in)
    ctx.unify(xl[-1], wl[1], f"linear ({node.name})")
    if b is not None:
        ctx.unify(ctx.label_or_anon(b)[0], wl[0], f"linear bias ({node.name})")
    mod = ctx.module_of(node)
    ctx.rule(mod, "in_features", wl[1])
    ctx.rule(mod, "out_features", wl[0])
    ctx.quant_site(w, mod, x)
    return xl[:-1] + [wl[0]]


_CONV_TRANSPOSE = (aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d)


@register_op(aten.conv1d, aten.conv2d, aten.conv3d, macs=macs.CONV)
def conv(ctx: Context, node: fx.Node) -> Labels:
    x, w, b = node.args[0], node.args[1], _arg(node, 2, "bias")
    target = node.target.overloadpacket
    if target is aten.convolution:
        transposed, groups = bool(node.args[6]), int(node.args[8])
    elif target in _CONV_TRANSPOSE:
        transposed, groups = True, int(_arg(node, 6, "groups", 1))
    else:
        transposed, groups = False, int(_arg(node, 6, "groups", 1))
    xl, wl = ctx.label_or_anon(x), ctx.label_or_anon(w)
    ch = 1 if len(xl) == len(wl) else 0  # batched (N, C, ...) or unbatched (C, ...)
    why = f"{target} ({node.name})"
    g = ctx.alg.new(groups) if groups > 1 else None
    if not transposed:  # w: (out, in/groups, *k)
        ctx.unify(xl[ch], prod(g, wl[1]) if g else wl[1], why)
        if g:
            ctx.unify(wl[0], prod(g, ctx.alg.new(wl[0].size // groups)), why)
        out_ch = wl[0]
    else:  # w: (in, out/groups, *k)
        ctx.unify(xl[ch], wl[0], why)
        if g:
            ctx.unify(wl[0], prod(g, ctx.alg.new(wl[0].size // groups)), why)
        out_ch = prod(g, wl[1]) if g else wl[1]
    if b is not None:
        ctx.unify(ctx.label_or_anon(b)[0], out_ch, why)
    mod = ctx.module_of(node)
    ctx.rule(mod, "in_channels", xl[ch])
    ctx.rule(mod, "out_channels", out_ch)
    if g is not None:
        ctx.rule(mod, "groups", g)
    ctx.quant_site(w, mod, x)
    out = ctx.shape(node)
    return xl[:ch] + [out_ch] + [Anon(n) for n in out[ch + 1 :]]


register_op(aten.convolution, macs=macs.CONVOLUTION)(conv)
register_op(*_CONV_TRANSPOSE, macs=macs.CONV_TRANSPOSE)(conv)


def _contract(ctx: Context, node: fx.Node, a: Any, b: Any) -> list[Expr]:
    """Labels of ``a @ b`` with broadcasting batch dims (torch.matmul semantics)."""
    al, bl = ctx.label_or_anon(a), ctx.label_or_anon(b)
    why = f"{node.target} ({node.name})"
    a1, b1 = len(al) == 1, len(bl) == 1
    if a1:
        al = [Anon(1)] + al
    if b1:
        bl = bl + [Anon(1)]
    ctx.unify(al[-1], bl[-2], why)
    if not ctx.is_static(a) and not ctx.is_static(b):
        # a product of two activations (attention scores, attention x values): its channels
        # cannot be sliced through a weight; only the batch-like dims stay free.
        ctx.freeze([al[-1], al[-2], bl[-1]], f"contraction of two activations at {node.name}")
    out_shape = ctx.shape(node)
    nb = len(out_shape) - (0 if a1 else 1) - (0 if b1 else 1)
    batch = ctx.broadcast_labels([al[:-2], bl[:-2]], out_shape[:nb], why)
    return batch + ([] if a1 else [al[-2]]) + ([] if b1 else [bl[-1]])


@register_op(aten.matmul, aten.mm, aten.bmm, macs=macs.MATMUL, product=MATMUL)
def matmul(ctx: Context, node: fx.Node) -> Labels:
    a, b = node.args[0], node.args[1]
    mod = ctx.module_of(node)
    if ctx.is_static(b) and not ctx.is_static(a):
        ctx.quant_site(b, mod, a)
    return _contract(ctx, node, a, b)


@register_op(aten.einsum)
def einsum(ctx: Context, node: fx.Node) -> Labels:
    """``einsum("bhid,bhjd->bhij", q, k)``: every letter is one set of positions in all operands.

    Equal letters are unified across operands (size-1 broadcasts aside). A letter summed away
    (absent from the output) is contracted: free between an activation and a weight (a layer,
    like linear's input features), frozen when it only sums one operand or joins two
    activations. As for matmul, a product of two activations also freezes its non-batch
    letters (attention's sequence and head dims); letters shared by both and kept in the
    output (batch, heads) stay free. Ellipses are not followed: everything is frozen.
    """
    equation, operands = str(node.args[0]).replace(" ", ""), list(node.args[1])
    labs = [ctx.label_or_anon(t) for t in operands]
    terms = equation.split("->")[0].split(",") if "->" in equation else []
    out_shape = ctx.shape(node)
    why = f"{node.target} ({node.name})"
    rhs = equation.split("->")[-1]
    if "." in equation or len(terms) != len(labs) or any(len(t) != len(lab) for t, lab in zip(terms, labs)):
        for lab in labs:
            ctx.freeze(lab, f"{node.target} with an ellipsis or an unexpected layout at {node.name}")
        return ctx.anon(out_shape)
    letters: dict[str, Expr] = {}
    for term, lab in zip(terms, labs):
        for ch, e in zip(term, lab):
            cur = letters.get(ch)
            if cur is None or (cur.size == 1 and e.size > 1):
                letters[ch] = e
            elif e.size == cur.size and e.size > 1:
                ctx.unify(cur, e, why)
    active = [i for i, t in enumerate(operands) if not ctx.is_static(t)]
    for ch, e in letters.items():
        holders = [i for i, term in enumerate(terms) if ch in term]
        if ch not in rhs and len(holders) == 1:
            ctx.freeze([e], f"{node.target} sums over these channels at {node.name}")
        elif len(active) >= 2 and not (ch in rhs and all(i in holders for i in active)):
            ctx.freeze([e], f"contraction of two activations at {node.name}")
    out = [letters[ch] for ch in rhs]
    return out if [e.size for e in out] == list(out_shape) else ctx.anon(out_shape)


@register_op(aten.addmm, aten.baddbmm, macs=macs.ADDMM)
def addmm(ctx: Context, node: fx.Node) -> Labels:
    bias, a, b = node.args[0], node.args[1], node.args[2]
    mod = ctx.module_of(node)
    out = _contract(ctx, node, a, b)
    if ctx.is_static(b) and not ctx.is_static(a):
        ctx.quant_site(b, mod, a)
    return ctx.broadcast_labels([out, ctx.label_or_anon(bias)], ctx.shape(node), f"addmm ({node.name})")


register_op(aten.addbmm)(addmm)  # sums over the batch: its MACs come from the FLOP counter


@register_op(aten.batch_norm, aten.instance_norm)
def batch_norm(ctx: Context, node: fx.Node) -> Labels:
    xl = ctx.label_or_anon(node.args[0])
    ch = xl[1] if len(xl) > 1 else xl[0]
    for t in node.args[1:5]:
        if ctx.is_tensor(t):
            ctx.unify(ch, ctx.label_or_anon(t)[0], f"batch_norm ({node.name})")
    ctx.rule(ctx.module_of(node), "num_features", ch)
    return xl


@register_op(aten.layer_norm, aten.rms_norm)
def layer_norm(ctx: Context, node: fx.Node) -> Labels:
    xl = ctx.label_or_anon(node.args[0])
    k = len(node.args[1])
    why = f"{node.target} normalises over these channels ({node.name})"
    for t in node.args[2:4]:
        if ctx.is_tensor(t):
            for e, d in zip(xl[-k:], ctx.label_or_anon(t)):
                ctx.unify(e, d, why)
    ctx.freeze(xl[-k:], why)
    return xl


@register_op(aten.group_norm)
def group_norm(ctx: Context, node: fx.Node) -> Labels:
    xl = ctx.label_or_anon(node.args[0])
    groups, ch = int(node.args[1]), xl[1]
    why = f"group_norm ({node.name})"
    g, inner = ctx.alg.new(groups), ctx.alg.new(ch.size // groups)
    ctx.unify(ch, prod(g, inner), why)
    ctx.freeze([inner], f"group_norm normalises within each group of channels ({node.name})")
    for t in node.args[2:4]:
        if ctx.is_tensor(t):
            ctx.unify(ch, ctx.label_or_anon(t)[0], why)
    mod = ctx.module_of(node)
    ctx.rule(mod, "num_groups", g)
    ctx.rule(mod, "num_channels", ch)
    return xl


@register_op(aten.embedding, macs=macs.LOOKUP)
def embedding(ctx: Context, node: fx.Node) -> Labels:
    w, idx = node.args[0], node.args[1]
    wl = ctx.label_or_anon(w)  # (vocab, dim)
    mod = ctx.module_of(node)
    ctx.rule(mod, "embedding_dim", wl[1])
    ctx.quant_site(w, mod, None, embedding=True)
    return ctx.anon(ctx.shape(idx)) + [wl[1]]
