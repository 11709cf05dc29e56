"""Channel-space analysis: run the op handlers over a captured graph.

Every parameter and buffer dimension starts as a fresh `Space`; every user input dimension is
`Anon`. Handlers propagate labels node by node (see `geta.ops.registry`), merging, refining and
freezing spaces. Afterwards the *channel spaces* are the unrefined root spaces that occur on an
activation (a tensor that depends on a user input); each one with parameter slices becomes a
`PruneGroup` (`geta.graph.groups`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from geta.graph.ir import Graph, TensorRef
from geta.graph.space import Anon, Expr, Space, SpaceAlgebra

__all__ = ["Context", "Labels", "Analysis", "AttrRule", "QuantSite", "analyze"]

Labels = list[Expr] | tuple["Labels", ...] | None


@dataclass(frozen=True, eq=False)
class AttrRule:
    """After pruning, set ``module.attr`` to the surviving size of ``expr`` (e.g. out_channels)."""

    module: nn.Module
    attr: str
    expr: Expr
    scale: int = 1  # attribute = kept size // scale (e.g. heads = kept rows // head_dim)


@dataclass(frozen=True, eq=False)
class QuantSite:
    """A layer whose weight (and input activation) can be quantized."""

    weight: TensorRef
    module: nn.Module | None  # the layer module whose first input is the layer's input
    input_node: fx.Node | None
    embedding: bool = False


@dataclass(frozen=True, eq=False)
class Binding:
    """Dimension ``dim`` of a parameter/buffer carries the label ``expr``."""

    ref: TensorRef
    dim: int
    expr: Expr


@dataclass(eq=False)
class Analysis:
    graph: Graph
    algebra: SpaceAlgebra
    labels: dict[fx.Node, Labels]
    bindings: list[Binding]
    attr_rules: list[AttrRule]
    quant_sites: list[QuantSite]
    unknown_ops: dict[str, int] = field(default_factory=dict)
    activation_spaces: list[Space] = field(default_factory=list)


class Context:
    """What a handler sees: input labels, shapes, and the operations on spaces."""

    def __init__(self, graph: Graph, root: nn.Module) -> None:
        self.graph = graph
        self.root = root
        self.alg = SpaceAlgebra()
        self.labels: dict[fx.Node, Labels] = {}
        self.static: dict[fx.Node, bool] = {}
        self.attr_rules: list[AttrRule] = []
        self.quant_sites: list[QuantSite] = []
        self.unknown_ops: dict[str, int] = {}
        self._modules: dict[str, nn.Module] = {}

    # -- reading inputs ---------------------------------------------------------------------
    def label(self, arg: Any) -> list[Expr] | None:
        if isinstance(arg, fx.Node):
            lab = self.labels.get(arg)
            return lab if isinstance(lab, list) else None
        return None

    def label_or_anon(self, arg: Any) -> list[Expr]:
        """A copy of the labels of ``arg``, or unlabelled dims of its shape when it has none."""
        lab = self.label(arg)
        return list(lab) if lab is not None else self.anon(self.shape(arg))

    def shape(self, arg: Any) -> tuple[int, ...]:
        val = arg.meta.get("val") if isinstance(arg, fx.Node) else arg
        return tuple(int(s) for s in val.shape) if isinstance(val, torch.Tensor) else ()

    def is_tensor(self, arg: Any) -> bool:
        return isinstance(arg, fx.Node) and isinstance(arg.meta.get("val"), torch.Tensor)

    def is_static(self, arg: Any) -> bool:
        """True if ``arg`` depends on no user input (a weight, possibly transformed)."""
        return not isinstance(arg, fx.Node) or self.static.get(arg, True)

    def ref(self, arg: Any) -> TensorRef | None:
        """The parameter behind ``arg``, looking through pass-through ops (fake-quant, casts)."""
        node = arg
        while isinstance(node, fx.Node):
            if node in self.graph.refs:
                return self.graph.refs[node]
            if node.op != "call_function" or not node.args or not isinstance(node.args[0], fx.Node):
                return None
            if _is_passthrough(node.target):
                node = node.args[0]
            else:
                return None
        return None

    def module_of(self, node: fx.Node) -> nn.Module | None:
        """The innermost module whose forward produced ``node`` (by its exact path)."""
        path = self.graph.module_paths.get(node)
        if path is None:
            return None
        mod = self._modules.get(path)
        if mod is None:
            try:
                mod = self.root.get_submodule(path)
            except AttributeError:
                return None
            self._modules[path] = mod
        return mod

    # -- building labels --------------------------------------------------------------------
    def anon(self, shape: tuple[int, ...]) -> list[Expr]:
        return [Anon(n) for n in shape]

    def unify(self, a: Expr, b: Expr, why: str) -> None:
        self.alg.unify(a, b, why)

    def freeze(self, labels: Labels, why: str) -> None:
        for e in _flat(labels):
            self.alg.freeze(e, why)

    def broadcast(self, args: list[Any], out_shape: tuple[int, ...], why: str) -> list[Expr]:
        """Labels of an element-wise op's output; aligned non-broadcast dims are unified."""
        labs = [lab for lab in (self.label(a) for a in args) if lab is not None]
        return self.broadcast_labels(labs, out_shape, why)

    def broadcast_labels(self, labs: list[list[Expr]], out_shape: tuple[int, ...], why: str) -> list[Expr]:
        """Broadcast label lists right-aligned to ``out_shape``, unifying equal-size dims."""
        out: list[Expr | None] = [None] * len(out_shape)
        for lab in labs:
            offset = len(out_shape) - len(lab)
            for i, e in enumerate(lab):
                j = i + offset
                if e.size != out_shape[j] or e.size == 1:
                    continue  # a broadcast (size-1) dim
                cur = out[j]
                if cur is None:
                    out[j] = e
                else:
                    self.unify(cur, e, why)
        return [e if e is not None else Anon(n) for e, n in zip(out, out_shape)]

    def rule(self, module: nn.Module | None, attr: str, expr: Expr, scale: int = 1) -> None:
        if module is not None and hasattr(module, attr):
            self.attr_rules.append(AttrRule(module, attr, expr, scale))

    def quant_site(
        self, weight: Any, module: nn.Module | None, input_node: Any, *, embedding: bool = False
    ) -> None:
        """Declare ``weight`` quantizable; ``module`` is the layer whose first input is ``input_node``."""
        ref = self.ref(weight)
        if ref is not None and ref.is_param:
            node = input_node if isinstance(input_node, fx.Node) else None
            self.quant_sites.append(QuantSite(ref, module, node, embedding))


def _is_passthrough(target: Any) -> bool:
    from geta.ops.elementwise import PASSTHROUGH

    return target in PASSTHROUGH or getattr(target, "overloadpacket", None) in PASSTHROUGH


def _flat(labels: Labels) -> list[Expr]:
    if labels is None:
        return []
    if isinstance(labels, list):
        return labels
    return [e for lab in labels for e in _flat(lab)]


def _value_labels(ctx: Context, val: Any) -> Labels:
    if isinstance(val, torch.Tensor):
        return ctx.anon(tuple(int(s) for s in val.shape))
    if isinstance(val, (tuple, list)):
        return tuple(_value_labels(ctx, v) for v in val)
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


def analyze(graph: Graph, model: nn.Module) -> Analysis:
    """Run every op handler over ``graph``; return labels, bindings and module rules."""
    from geta.ops.registry import handler_for

    ctx = Context(graph, model)
    bindings: list[Binding] = []
    for node in graph.program.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder":
            ref = graph.refs.get(node)
            if ref is None:
                ctx.labels[node] = _value_labels(ctx, val)
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
            ctx.labels[node] = _value_labels(ctx, val)
            ctx.static[node] = True
    active: dict[Space, None] = {}
    for node, lab in ctx.labels.items():
        if not ctx.static.get(node, True):
            for e in _flat(lab):
                for s in ctx.alg.leaves(e):
                    active[s] = None
    return Analysis(
        graph, ctx.alg, ctx.labels, bindings, ctx.attr_rules, ctx.quant_sites, ctx.unknown_ops, list(active)
    )


def _run_handler(ctx: Context, node: fx.Node, handler: Any, val: Any) -> Labels:
    if handler is None:
        name = str(node.target)
        ctx.unknown_ops[name] = ctx.unknown_ops.get(name, 0) + 1
        for a in node.all_input_nodes:
            ctx.freeze(ctx.labels.get(a), f"touches {name}, an op geta has no handler for")
        return _value_labels(ctx, val)
    labels = handler(ctx, node)
    if not _check(labels, val):  # a handler bug must not corrupt the analysis: freeze instead
        for a in node.all_input_nodes:
            ctx.freeze(ctx.labels.get(a), f"internal: handler for {node.target} gave wrong shapes")
        return _value_labels(ctx, val)
    return labels
