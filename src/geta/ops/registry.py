"""The op-handler registry: everything geta knows about an op lives in its handler.

A handler is a function ``handler(ctx, node) -> labels`` called once per graph node, in
topological order. It reads the labels of the node's inputs from ``ctx`` (one `Expr` per
dimension, see `geta.graph.space`), states which channels must coincide (``ctx.unify``), which
cannot be removed (``ctx.freeze``), and returns the labels of the node's output. Handlers are
keyed by op object (an ATen ``OpOverload``/``OpOverloadPacket`` or a Python callable such as
``operator.getitem``), never by a string. An op without a handler freezes every channel it
touches and names itself as the reason; analysis never crashes on an unknown op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from geta.errors import GetaError

if TYPE_CHECKING:
    from torch import fx

    from geta.graph.analysis import Context, Labels

__all__ = ["Handler", "register_op", "handler_for", "registered_ops"]

Handler = Callable[["Context", "fx.Node"], "Labels"]

_HANDLERS: dict[Any, Handler] = {}


def register_op(*targets: Any) -> Callable[[Handler], Handler]:
    """Register ``handler`` for each op object in ``targets`` (duplicates raise).

    >>> import torch
    >>> from geta.ops.registry import handler_for
    >>> handler_for(torch.ops.aten.relu.default) is not None
    True
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
    _load_builtin_handlers()
    fn = _HANDLERS.get(target)
    if fn is None:
        packet = getattr(target, "overloadpacket", None)
        fn = _HANDLERS.get(packet) if packet is not None else None
    return fn


def registered_ops() -> list[Any]:
    _load_builtin_handlers()
    return list(_HANDLERS)


_loaded = False


def _load_builtin_handlers() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from geta.ops import attention, elementwise, layers, reduce, shape  # noqa: F401  (register)
