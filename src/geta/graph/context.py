"""The vocabulary of the channel analysis: labels, the handler `Context`, and what it records.

Layering (every import points down)::

    graph/analysis.py     the interpreter: walks the graph, calls one handler per node
    ops/catalog.py        the one place that loads the built-in handler families
    ops/<family>.py       the handlers (layers, elementwise, shape, indexing, reduce, ...)
    ops/registry.py       register_op: op object -> handler + facts (traits, MACs, product kind)
    ops/traits.py, macs.py  the facts' vocabulary (Trait, ProductKind, MacRule)
    graph/context.py      this module: Labels, Context, AttrRule, QuantSite, Binding, Analysis
    graph/space.py, ir.py the label algebra and the captured graph

A handler is ``handler(ctx, node) -> Labels``: it reads the labels of the node's inputs from
``ctx`` (one `Expr` per dimension), says which channels must coincide (``ctx.unify``) or cannot
be removed (``ctx.freeze``), and returns the labels of the node's output. Module-level rules
(`geta.ops.modules`) read the finished `Analysis`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from geta.graph.ir import Graph, TensorRef
from geta.graph.space import Anon, Expr, Space, SpaceAlgebra

__all__ = ["Labels", "Context", "AttrRule", "QuantSite", "Binding", "Analysis", "flat", "value_labels"]

Labels = list[Expr] | tuple["Labels", ...] | None
"""The labels of one node's value: a list (one `Expr` per dim) for a tensor, a tuple of labels
for a tuple of values, None for a non-tensor."""


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
    """The result of `geta.graph.analysis.analyze`: labels, parameter bindings, module rules."""

    graph: Graph
    algebra: SpaceAlgebra
    labels: dict[fx.Node, Labels]
    bindings: list[Binding]
    attr_rules: list[AttrRule]
    quant_sites: list[QuantSite]
    unknown_ops: dict[str, int] = field(default_factory=dict)
    activation_spaces: list[Space] = field(default_factory=list)


class Context:
    """What a handler sees: input labels, shapes, and the operations on spaces.

    ``passthrough`` holds the ops through which a weight is still "the weight" (fake-quant,
    casts); the interpreter passes the set the handler families declare.
    """

    def __init__(self, graph: Graph, root: nn.Module, passthrough: Collection[Any] = ()) -> None:
        self.graph = graph
        self.root = root
        self.alg = SpaceAlgebra()
        self.labels: dict[fx.Node, Labels] = {}
        self.static: dict[fx.Node, bool] = {}
        self.attr_rules: list[AttrRule] = []
        self.quant_sites: list[QuantSite] = []
        self.unknown_ops: dict[str, int] = {}
        self._passthrough = passthrough
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
            if self._is_passthrough(node.target):
                node = node.args[0]
            else:
                return None
        return None

    def _is_passthrough(self, target: Any) -> bool:
        packet = getattr(target, "overloadpacket", None)
        return target in self._passthrough or packet in self._passthrough

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
        for e in flat(labels):
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


def flat(labels: Labels) -> list[Expr]:
    """Every `Expr` in ``labels``, nested tuples flattened."""
    if labels is None:
        return []
    if isinstance(labels, list):
        return labels
    return [e for lab in labels for e in flat(lab)]


def value_labels(ctx: Context, val: Any) -> Labels:
    """Fresh unlabelled dims for a node's value (``node.meta['val']``), tuples kept as tuples."""
    if isinstance(val, torch.Tensor):
        return ctx.anon(tuple(int(s) for s in val.shape))
    if isinstance(val, (tuple, list)):
        return tuple(value_labels(ctx, v) for v in val)
    return None
