"""Handlers of element-wise ops: channel-wise maps keep labels, joins merge spaces.

An element-wise op treats channels independently, so it is transparent to pruning: unary ops
pass their input's labels through; binary ops (a residual ``add``, a squeeze-excitation gate
``mul``) unify the spaces of aligned dimensions (broadcast dims of size 1 excepted).

Unary ops are registered in groups by what they declare about values (`geta.ops.traits`): never
negative (relu, sigmoid, ...), the same values (casts, copies, the fake-quant), sign kept
(dropout); ``operator.getitem`` returns a part of a tuple.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

from geta.graph.context import Context, Labels
from geta.graph.space import Anon
from geta.ops.registry import register_op
from geta.ops.traits import Trait
from geta.quant import functional as _qf  # noqa: F401  (registers torch.ops.geta.fake_quant)

aten = torch.ops.aten

__all__: list[str] = []

_UNARY = [
    aten.gelu,
    aten.gelu_,
    aten.silu,
    aten.silu_,
    aten.tanh,
    aten.tanh_,
    aten.neg,
    aten.log,
    aten.sqrt,
    aten.rsqrt,
    aten.reciprocal,
    aten.sin,
    aten.cos,
    aten.erf,
    aten.expm1,
    aten.log1p,
    aten.sign,
    aten.round,
    aten.floor,
    aten.ceil,
    aten.trunc,
    aten.logical_not,
    aten.bitwise_not,
    aten.isnan,
    aten.nan_to_num,
    aten.clamp,
    aten.clamp_,
    aten.clamp_min,
    aten.clamp_max,
    aten.hardtanh,
    aten.hardtanh_,
    aten.hardswish,
    aten.hardswish_,
    aten.leaky_relu,
    aten.leaky_relu_,
    aten.elu,
    aten.elu_,
    aten.selu,
    aten.celu,
    aten.softplus,
    aten.mish,
    aten.alpha_dropout,
    aten.feature_alpha_dropout,
    aten.tril,
    aten.triu,
    aten.fill,
    aten.fill_,
    aten.zero_,
    aten.bernoulli,
    aten.logit,
]
_BINARY = [
    aten.add,
    aten.add_,
    aten.sub,
    aten.sub_,
    aten.rsub,
    aten.mul,
    aten.mul_,
    aten.div,
    aten.div_,
    aten.maximum,
    aten.minimum,
    aten.max.other,  # max(a, b): element-wise (the other overloads of max/min reduce, ops/reduce.py)
    aten.min.other,
    aten.where,
    aten.masked_fill,
    aten.masked_fill_,
    aten.eq,
    aten.ne,
    aten.lt,
    aten.le,
    aten.gt,
    aten.ge,
    aten.logical_and,
    aten.logical_or,
    aten.logical_xor,
    aten.bitwise_and,
    aten.bitwise_or,
    aten.bitwise_xor,
    aten.__and__,
    aten.__or__,
    aten.__xor__,
    aten.addcmul,
    aten.addcdiv,
    aten.lerp,
    aten.floor_divide,
    aten.remainder,
    aten.fmod,
    aten.pow,
    aten.atan2,
    aten.copy_,
    aten.copy,
    aten.type_as,
]
# Tensors holding one value everywhere, of a shape the model's code computes: every dim can
# be any channels (see `uniform`).
_UNIFORM = [
    aten.zeros,
    aten.ones,
    aten.full,
    aten.empty,
    aten.new_zeros,
    aten.new_ones,
    aten.new_full,
    aten.new_empty,
]
# The same, shaped like their first input: they carry its channels.
_UNIFORM_LIKE = [aten.zeros_like, aten.ones_like, aten.full_like, aten.empty_like]
_CREATE = [
    aten.arange,
    aten.scalar_tensor,
    aten.rand,
    aten.randn,
    aten.randint,
    aten.rand_like,
    aten.randn_like,
    aten.tensor,
    aten.linspace,
    aten.eye,
    aten._assert_tensor_metadata,
    aten.sym_size,
    aten.sym_numel,
    aten._assert_scalar,
    aten.item,
    aten.lift_fresh,
]

# Same channels, and facts about their values (`geta.ops.traits`):
_NEVER_NEGATIVE = [
    aten.relu,
    aten.relu_,
    aten.sigmoid,
    aten.sigmoid_,
    aten.abs,
    aten.exp,
    aten.square,
    aten.hardsigmoid,
    aten.hardsigmoid_,
    aten.relu6,
]
_SAME_VALUES = [
    aten.clone,
    aten.contiguous,
    aten.detach,
    aten.detach_,
    aten.alias,
    aten.lift_fresh_copy,
    aten.to,
    aten._to_copy,
]
_KEEP_SIGN = [aten.dropout, aten.dropout_, aten.feature_dropout]  # x -> x · {0, 1/(1-p)}


def _first(ctx: Context, node: fx.Node) -> list:
    x = node.args[0] if node.args else None
    lab = ctx.label(x)
    return list(lab) if lab is not None else ctx.anon(ctx.shape(node))


@register_op(*dict.fromkeys(_UNARY))
def unary(ctx: Context, node: fx.Node) -> Labels:
    """Same shape, channel-wise: the output carries the input's labels."""
    lab = _first(ctx, node)
    out = ctx.shape(node)
    if [e.size for e in lab] != list(out):
        return ctx.broadcast([node.args[0]], out, f"{node.target}")
    return lab


register_op(*_NEVER_NEGATIVE, traits={Trait.NONNEGATIVE})(unary)
register_op(*_SAME_VALUES, torch.ops.geta.fake_quant, traits={Trait.SAME_VALUES})(unary)
register_op(*_KEEP_SIGN, traits={Trait.KEEPS_SIGN})(unary)


@register_op(*_BINARY)
def binary(ctx: Context, node: fx.Node) -> Labels:
    """Broadcasting join: aligned channel dims of all tensor operands are the same channels."""
    tensors = [a for a in list(node.args) + list(node.kwargs.values()) if ctx.is_tensor(a)]
    return ctx.broadcast(tensors, ctx.shape(node), f"{node.target} ({node.name})")


@register_op(*_CREATE)
def create(ctx: Context, node: fx.Node) -> Labels:
    """A new tensor with no channel meaning (position ids, random values, literals)."""
    val = node.meta.get("val")
    return ctx.anon(ctx.shape(node)) if isinstance(val, torch.Tensor) else None


@register_op(*_UNIFORM)
def uniform(ctx: Context, node: fx.Node) -> Labels:
    """One value everywhere (``torch.zeros((1, self.n_heads, T, S))``): each dim a fresh space.

    Removing positions of such a tensor leaves the same tensor, smaller; so each dim of size
    > 1 gets a space of its own that merges with whatever channels the tensor meets (a zero
    position bias added to attention scores joins the heads) instead of freezing them. Whether
    the code then builds it at the pruned size (from ``x.shape``, or from an attribute a fixer
    updates) is what the trial conversion checks (`geta.graph.trial`).
    """
    if not isinstance(node.meta.get("val"), torch.Tensor):
        return None
    return [ctx.alg.new(n) if n > 1 else Anon(n) for n in ctx.shape(node)]


@register_op(*_UNIFORM_LIKE)
def uniform_like(ctx: Context, node: fx.Node) -> Labels:
    """``zeros_like(x)`` and kin: x's shape, so x's channels."""
    return _first(ctx, node)


@register_op(operator.getitem, traits={Trait.PART})
def getitem(ctx: Context, node: fx.Node) -> Labels:
    src, idx = node.args
    lab: Any = ctx.labels.get(src) if isinstance(src, fx.Node) else None
    if isinstance(lab, tuple) and isinstance(idx, int):
        return lab[idx]
    val = node.meta.get("val")
    return ctx.anon(ctx.shape(node)) if isinstance(val, torch.Tensor) else None
