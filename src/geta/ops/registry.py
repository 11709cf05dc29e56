"""The op registry: everything geta knows about an op is declared once, with its handler.

A handler is a function ``handler(ctx, node) -> labels`` called once per graph node, in
topological order. It reads the labels of the node's inputs from ``ctx`` (one `Expr` per
dimension, see `geta.graph.space` and `geta.graph.context`), states which channels must
coincide (``ctx.unify``), which cannot be removed (``ctx.freeze``), and returns the labels of
the node's output. Handlers are keyed by op object (an ATen ``OpOverload``/``OpOverloadPacket``
or a Python callable such as ``operator.getitem``), never by a string.

The same `register_op` call declares the op's other facts (`OpFacts`): its traits
(`geta.ops.traits.Trait`: passes values through, reshapes only, a part, keeps the sign, never
negative), its `MacRule` (`geta.ops.macs`) when it multiplies, and its product kind when it may
multiply two activations. Nothing else keeps a table of ops: analysis, MAC counting, quantizer
signs and product sites ask `has_trait`, `ops_with`, `mac_rule` and `product_kind`.

This module only stores facts; it imports no handler. The built-in families (``geta.ops.layers``,
``elementwise``, ``shape``, ... listed in `geta.ops.catalog`) register themselves when the
catalog imports them, and the interpreter (`geta.graph.analysis`) imports the catalog. An op
without a handler freezes every channel it touches and names itself as the reason; a handler
that raises freezes what its op touches (the reason names the op and the error): analysis never
crashes on an op.

To cover a new op, register it in the family it belongs to (or a new family module listed in
`geta.ops.catalog`), with every fact at once::

    @register_op(aten.my_op, traits={Trait.KEEPS_SIGN}, macs=MacRule("my_op", (0, 1), my_macs))
    def my_op(ctx: Context, node: fx.Node) -> Labels:
        return ctx.label_or_anon(node.args[0])  # channel-wise: labels pass through
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from torch import fx

from geta.errors import GetaError
from geta.graph.context import Context, Labels
from geta.ops.macs import MacRule
from geta.ops.traits import PRODUCT_KINDS, Trait

__all__ = [
    "Handler",
    "OpFacts",
    "facts_for",
    "handler_for",
    "has_trait",
    "mac_rule",
    "ops_with",
    "product_kind",
    "register_op",
    "registered_ops",
]

Handler = Callable[[Context, fx.Node], Labels]


@dataclass(frozen=True)
class OpFacts:
    """What geta knows about one op: its channel rule and the facts about its values."""

    handler: Handler
    traits: frozenset[Trait] = frozenset()
    macs: MacRule | None = None  # how many multiply-accumulates one call performs
    product: str | None = None  # a `geta.ops.traits.PRODUCT_KINDS` name: may multiply two activations


_FACTS: dict[Any, OpFacts] = {}


def register_op(
    *targets: Any,
    traits: Collection[Trait] = (),
    macs: MacRule | None = None,
    product: str | None = None,
) -> Callable[[Handler], Handler]:
    """Register ``handler`` and the facts of each op object in ``targets`` (duplicates raise).

    >>> import torch
    >>> from geta.ops import catalog  # registers the built-in handler families
    >>> handler_for(torch.ops.aten.relu.default).__name__
    'unary'
    >>> has_trait(torch.ops.aten.relu.default, Trait.NONNEGATIVE)
    True
    """
    facts_traits = frozenset(traits)
    unknown = [t for t in facts_traits if not isinstance(t, Trait)]
    if unknown:
        raise GetaError(f"register_op traits={unknown!r}: use members of geta.ops.traits.Trait")
    if product is not None and product not in PRODUCT_KINDS:
        raise GetaError(f"register_op product={product!r}: use one of {sorted(PRODUCT_KINDS)}")
    if product is not None and macs is None:
        raise GetaError(f"register_op product={product!r} needs macs= (a product op multiplies)")

    def deco(fn: Handler) -> Handler:
        for t in targets:
            if t in _FACTS:
                raise GetaError(f"an op handler for {t} is already registered ({_FACTS[t].handler.__name__})")
        for t in targets:
            _FACTS[t] = OpFacts(fn, facts_traits, macs, product)
        return fn

    return deco


def facts_for(target: Any) -> OpFacts | None:
    """The facts of an op: by overload first, then by its overload packet."""
    facts = _FACTS.get(target)
    if facts is None:
        packet = getattr(target, "overloadpacket", None)
        facts = _FACTS.get(packet) if packet is not None else None
    return facts


def handler_for(target: Any) -> Handler | None:
    """The handler of an op (None: geta has no channel rule for it)."""
    facts = facts_for(target)
    return facts.handler if facts is not None else None


def has_trait(target: Any, *traits: Trait) -> bool:
    """Does the op ``target`` (an overload or its packet) declare any of ``traits``?"""
    facts = facts_for(target)
    return facts is not None and not facts.traits.isdisjoint(traits)


def mac_rule(target: Any) -> MacRule | None:
    """The `MacRule` of an fx node target, or None (it multiplies nothing geta counts)."""
    facts = facts_for(target)
    return facts.macs if facts is not None else None


def product_kind(target: Any) -> str | None:
    """The product kind ('matmul', 'attention') of an fx node target, or None."""
    facts = facts_for(target)
    return facts.product if facts is not None else None


def ops_with(*traits: Trait) -> frozenset[Any]:
    """Every registered op object declaring any of ``traits`` (a derived view, never a table)."""
    return frozenset(t for t, f in _FACTS.items() if not f.traits.isdisjoint(traits))


def registered_ops() -> list[Any]:
    """Every op object with a handler (the built-in ones once `geta.ops.catalog` is imported)."""
    return list(_FACTS)
