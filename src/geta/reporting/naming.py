"""Names of activation x activation products: which step of attention a matmul is.

A weightless product is named by the module that runs it and its role: ``q@k`` for the
product a softmax follows (the attention scores), ``attn@v`` for the product of a softmax's
output (the weights times the values), ``attention`` for a fused scaled-dot-product attention,
so that a report reads ``layers.0.self_attn:q@k`` rather than the graph's ``matmul_2``.
"""

from __future__ import annotations

from torch import fx

from geta.ops import catalog  # noqa: F401  (registers the built-in op facts)
from geta.ops.registry import has_trait, product_kind
from geta.ops.traits import ATTENTION, Trait

__all__ = ["product_role"]

_HOPS = 4  # ops between an attention product and its softmax (scale, mask, cast, dropout)


def _is_softmax(node: fx.Node) -> bool:
    """Does ``node`` run an op declaring `Trait.SOFTMAX` (`geta.ops.registry`)?"""
    return has_trait(getattr(node.target, "overloadpacket", node.target), Trait.SOFTMAX)


def _near_softmax(start: fx.Node, forward: bool) -> bool:
    """Is there a softmax within `_HOPS` ops after (``forward``) or before ``start``?"""
    frontier, seen = [start], {start}
    for _ in range(_HOPS):
        step = [n for node in frontier for n in (node.users if forward else node.all_input_nodes)]
        frontier = [n for n in step if n not in seen and n.op == "call_function"]
        if any(_is_softmax(n) for n in frontier):
            return True
        seen.update(frontier)
    return False


def product_role(node: fx.Node) -> str | None:
    """'q@k' for the product a softmax follows (attention scores), 'attn@v' for the product of a
    softmax's output (weights times values), 'attention' for a fused scaled-dot-product
    attention; None for any other activation x activation op."""
    if product_kind(node.target) == ATTENTION:
        return "attention"  # both products and the softmax in one op
    first = node.args[0] if node.args else None
    if isinstance(first, fx.Node) and (_is_softmax(first) or _near_softmax(first, forward=False)):
        return "attn@v"
    return "q@k" if _near_softmax(node, forward=True) else None
