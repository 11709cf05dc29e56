"""The interpreter of the channel analysis: run the op handlers over a captured graph.

Every parameter and buffer dimension starts as a fresh `Space`; every user input dimension is
`Anon`. Handlers propagate labels node by node (see `geta.ops.registry`), merging, refining and
freezing spaces. Afterwards the *channel spaces* are the unrefined root spaces that occur on an
activation (a tensor that depends on a user input); each one with parameter slices becomes a
`PruneGroup` (`geta.graph.groups`).

`prepare` never fails on an op: an op without a handler, a handler that raises, and a handler
whose labels do not match the op's shapes all freeze the spaces the op touches, with a reason
naming the op.

This module is the top of the analysis layers: it imports the vocabulary
(`geta.graph.context`), the registry and, through `geta.ops.catalog`, the handler families;
none of them imports it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from geta.graph.context import (
    Analysis,
    AttrRule,
    Binding,
    Context,
    Labels,
    QuantSite,
    flat,
    value_labels,
)
from geta.graph.ir import Graph
from geta.graph.space import Expr, Space
from geta.ops import catalog  # noqa: F401  (importing the catalog registers the built-in handlers)
from geta.ops.registry import Handler, handler_for, ops_with
from geta.ops.traits import Trait

# The vocabulary is re-exported for callers that import it from here (prepare, plan).
__all__ = ["analyze", "Analysis", "AttrRule", "Binding", "Context", "Labels", "QuantSite"]


def analyze(graph: Graph, model: nn.Module) -> Analysis:
    """Run every op handler over ``graph``; return labels, bindings and module rules."""
    ctx = Context(graph, model, ops_with(Trait.SAME_VALUES))  # a weight through a cast is the weight
    bindings: list[Binding] = []
    for node in graph.program.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder":
            ref = graph.refs.get(node)
            if ref is None:
                ctx.labels[node] = value_labels(ctx, val)
                ctx.static[node] = node not in graph.user_inputs
                continue
            dims: list[Expr] = [ctx.alg.new(int(n)) for n in ref.tensor.shape]
            bindings.extend(Binding(ref, d, e) for d, e in enumerate(dims))
            ctx.labels[node], ctx.static[node] = dims, True
        elif node.op == "call_function":
            ctx.static[node] = all(ctx.is_static(a) for a in node.all_input_nodes)
            ctx.labels[node] = _run_handler(ctx, node, handler_for(node.target), val)
        elif node.op == "output":
            for out in graph.user_outputs:
                ctx.freeze(ctx.labels.get(out), "feeds the model output")
        else:
            ctx.labels[node] = value_labels(ctx, val)
            ctx.static[node] = True
    active: dict[Space, None] = {}
    for node, lab in ctx.labels.items():
        if not ctx.static.get(node, True):
            for e in flat(lab):
                for s in ctx.alg.leaves(e):
                    active[s] = None
    return Analysis(
        graph, ctx.alg, ctx.labels, bindings, ctx.attr_rules, ctx.quant_sites, ctx.unknown_ops, list(active)
    )


def _run_handler(ctx: Context, node: fx.Node, handler: Handler | None, val: Any) -> Labels:
    if handler is None:
        name = str(node.target)
        ctx.unknown_ops[name] = ctx.unknown_ops.get(name, 0) + 1
        for a in node.all_input_nodes:
            ctx.freeze(ctx.labels.get(a), f"touches {name}, an op geta has no handler for")
        return value_labels(ctx, val)
    try:
        labels = handler(ctx, node)
    except Exception as err:  # a handler bug must not stop prepare: freeze what the op touches
        reason = f"{node.target} at {node.name}: its handler raised {type(err).__name__}: {err}"
        for a in node.all_input_nodes:
            ctx.freeze(ctx.labels.get(a), reason)
        return _frozen_labels(ctx, val, reason)
    if not _check(labels, val):  # a handler bug must not corrupt the analysis: freeze instead
        for a in node.all_input_nodes:
            ctx.freeze(ctx.labels.get(a), f"internal: handler for {node.target} gave wrong shapes")
        return value_labels(ctx, val)
    return labels


def _frozen_labels(ctx: Context, val: Any, reason: str) -> Labels:
    """Fresh spaces for a node's value, frozen with ``reason`` (so that the layers consuming it
    name the op that blocked them)."""
    if isinstance(val, torch.Tensor):
        dims: list[Expr] = [ctx.alg.new(int(n)) for n in val.shape]
        ctx.freeze(dims, reason)
        return dims
    if isinstance(val, (tuple, list)):
        return tuple(_frozen_labels(ctx, v, reason) for v in val)
    return None


def _check(labels: Labels, val: Any) -> bool:
    """Handler output must match the node's value structure and sizes."""
    if isinstance(val, torch.Tensor):
        return isinstance(labels, list) and [e.size for e in labels] == [int(s) for s in val.shape]
    if isinstance(val, (tuple, list)):
        return (
            isinstance(labels, tuple)
            and len(labels) == len(val)
            and all(_check(lab, v) for lab, v in zip(labels, val))
        )
    return True
