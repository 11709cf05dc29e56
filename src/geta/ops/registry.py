"""The op-handler registry: everything geta knows about an op lives in its handler.

A handler is a function ``handler(ctx, node) -> labels`` called once per graph node, in
topological order. It reads the labels of the node's inputs from ``ctx`` (one `Expr` per
dimension, see `geta.graph.space` and `geta.graph.context`), states which channels must
coincide (``ctx.unify``), which cannot be removed (``ctx.freeze``), and returns the labels of
the node's output. Handlers are keyed by op object (an ATen ``OpOverload``/``OpOverloadPacket``
or a Python callable such as ``operator.getitem``), never by a string.

This module only stores handlers; it imports none. The built-in families (``geta.ops.layers``,
``elementwise``, ``shape``, ... listed in `geta.ops.catalog`) register themselves with
`register_op` when the catalog imports them, and the interpreter
(`geta.graph.analysis`) imports the catalog. An op without a handler freezes every channel it
touches and names itself as the reason; a handler that raises freezes what its op touches (the
reason names the op and the error): analysis never crashes on an op.

To cover a new op, add a handler to the family it belongs to (or a new family module listed in
`geta.ops.catalog`)::

    @register_op(aten.my_op)
    def my_op(ctx: Context, node: fx.Node) -> Labels:
        return ctx.label_or_anon(node.args[0])  # channel-wise: labels pass through
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import fx

from geta.errors import GetaError
from geta.graph.context import Context, Labels

__all__ = ["Handler", "register_op", "handler_for", "registered_ops"]

Handler = Callable[[Context, fx.Node], Labels]

_HANDLERS: dict[Any, Handler] = {}


def register_op(*targets: Any) -> Callable[[Handler], Handler]:
    """Register ``handler`` for each op object in ``targets`` (duplicates raise).

    >>> import torch
    >>> from geta.ops import catalog  # registers the built-in handler families
    >>> handler_for(torch.ops.aten.relu.default).__name__
    'unary'
    """

    def deco(fn: Handler) -> Handler:
        for t in targets:
            if t in _HANDLERS:
                raise GetaError(f"an op handler for {t} is already registered ({_HANDLERS[t].__name__})")
            _HANDLERS[t] = fn
        return fn

    return deco


def handler_for(target: Any) -> Handler | None:
    """The handler of an op: by overload first, then by its overload packet."""
    fn = _HANDLERS.get(target)
    if fn is None:
        packet = getattr(target, "overloadpacket", None)
        fn = _HANDLERS.get(packet) if packet is not None else None
    return fn


def registered_ops() -> list[Any]:
    """Every op object with a handler (the built-in ones once `geta.ops.catalog` is imported)."""
    return list(_HANDLERS)
