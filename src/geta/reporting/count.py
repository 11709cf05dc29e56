"""`report`: count MACs, bits, BOPs and sizes of a model from its captured graph (docs/method.md §4).

The model is captured once (`geta.graph.capture`). Every op with a `MacRule` becomes one
`LayerReport`. Its operands are followed back through value-preserving ops (transposes,
views, casts) to where they come from, by object identity, never by name:

- an operand that reaches a parameter placeholder is the op's **weight**; the layer is the
  module that owns that parameter (for a quantized weight the placeholder is
  ``<layer>.parametrizations.weight.original``, owned by a ``ParametrizationList`` whose
  parent is the layer);
- a ``geta.fake_quant`` node met on the way is the **quantizer** of that operand: the
  `LearnableQuantizer` owning the node's ``step`` placeholder. So b_w and b_a are the bits of
  the quantizers the graph actually runs, e.g. an attention module whose pre-hook quantizes
  only its query input reports float key and value projections.

An op without a `MacRule` that multiplies matrices all the same (``aten.lstm`` of an
``nn.LSTM``) is counted by torch's FLOP counter (`geta.reporting.flops`) as a layer of its own
(``source='flop_counter'``), at the bits of its operands (float: 32 · 32). An op with a matrix
parameter that neither knows is listed in ``unknown_ops``: its cost is missing from the totals.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from geta.graph.capture import capture, normalize_inputs
from geta.graph.ir import Graph, TensorRef
from geta.ops import catalog  # noqa: F401  (registers the built-in op facts)
from geta.ops.registry import has_trait, mac_rule
from geta.ops.traits import VALUES_THROUGH
from geta.quant.quantizer import LearnableQuantizer
from geta.reporting.flops import flop_macs, op_name
from geta.reporting.model import DENSE_COUNTS_ATTR, FP32_BITS, CompressionReport, DenseCounts, LayerReport
from geta.reporting.naming import product_role

__all__ = ["LayerCost", "dense_counts", "dtype_bits", "input_shapes", "layer_costs", "report", "rounded_bits"]


def _looks_through(target: object) -> bool:
    """Does an op pass its first input's values on (a cast, a view, a part; `geta.ops.traits`)?

    Operands are traced back through such ops, e.g. a fused q/k/v weight chunked into three
    projections.
    """
    return has_trait(target, *VALUES_THROUGH)


def rounded_bits(quantizer: LearnableQuantizer) -> int:
    """The integer bit width a quantizer is reported, exported and frozen at: round(bits)."""
    return int(torch.round(quantizer.bits()))


def dtype_bits(dtype: torch.dtype) -> int:
    """Bits of an unquantized value: its float width (32 for float32); 32 for other dtypes."""
    return torch.finfo(dtype).bits if dtype.is_floating_point else FP32_BITS


@dataclass(frozen=True)
class _Operand:
    """Where one operand of a multiplying op comes from."""

    ref: TensorRef | None  # the parameter/buffer it is (behind views and a quantizer), or None
    quantizer: LearnableQuantizer | None  # the fake-quant it passed through, or None
    dtype: torch.dtype


class _Counter:
    """State of one report: what was counted already (tied weights, shared quantizers)."""

    def __init__(self, model: nn.Module, graph: Graph) -> None:
        self.graph = graph
        self.names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        self.parents: dict[int, tuple[nn.Module, str]] = {}  # id(ParametrizationList) -> (layer, attr)
        for module in model.modules():
            if parametrize.is_parametrized(module):
                for attr, plist in module.parametrizations.items():
                    self.parents[id(plist)] = (module, attr)
        self.seen_tensors: set[int] = set()
        self.seen_quantizers: set[int] = set()
        self.row_names: Counter[str] = Counter()

    def operand(self, arg: object) -> _Operand:
        """Follow ``arg`` back through look-through ops and fake-quants to its source."""
        node, quantizer = arg, None
        dtype = _dtype(arg)
        while isinstance(node, fx.Node):
            if node in self.graph.refs:
                return _Operand(self.graph.refs[node], quantizer, dtype)
            if node.op != "call_function" or not node.args:
                break
            packet = getattr(node.target, "overloadpacket", node.target)
            if packet is torch.ops.geta.fake_quant:
                quantizer = quantizer or self._quantizer_of(node)
            elif not _looks_through(packet):
                break
            node = node.args[0]
        return _Operand(None, quantizer, dtype)

    def _quantizer_of(self, fake_quant: fx.Node) -> LearnableQuantizer | None:
        ref = self.graph.refs.get(fake_quant.args[1])  # type: ignore[arg-type]  # the step placeholder
        return ref.owner if ref is not None and isinstance(ref.owner, LearnableQuantizer) else None

    def layer_name(self, node: fx.Node, weight: TensorRef | None, *, whole: bool = False) -> str:
        """The weight's module ('fc', 'attn.in_proj_weight' for other attributes); for a weight
        owned outside the module running the op (a tied lm_head) that module's path; for
        weightless ops 'module.path:op' ('self_attn:q@k' and 'self_attn:attn@v' around a
        softmax, 'self_attn:attention' for a fused one, else the graph's node name).
        ``whole``: an op using several weights of its module (an LSTM) is named by the module
        ('lstm'). Repeated names get '#2', '#3', ..."""
        path = self.graph.module_paths.get(node, "")
        if weight is None:
            base = f"{path}:{product_role(node) or node.name}".lstrip(":")
        else:
            owner, attr = self.parents.get(id(weight.owner), (weight.owner, weight.attr))
            module = self.names.get(id(owner), "")
            base = module if (attr == "weight" or whole) and module else f"{module}.{attr}".lstrip(".")
            if path and module != path and not module.startswith(path + "."):
                base = path
        self.row_names[base] += 1
        count = self.row_names[base]
        return base if count == 1 else f"{base}#{count}"

    def new_quantizers(self, *quantizers: LearnableQuantizer | None) -> int:
        fresh = 0
        for q in quantizers:
            if q is not None and id(q) not in self.seen_quantizers:
                self.seen_quantizers.add(id(q))
                fresh += 1
        return fresh

    def new_params(self, refs: list[TensorRef]) -> list[TensorRef]:
        fresh = []
        for ref in refs:
            if ref.is_param and id(ref.tensor) not in self.seen_tensors:
                self.seen_tensors.add(id(ref.tensor))
                fresh.append(ref)
        return fresh


def _dtype(arg: object) -> torch.dtype:
    val = arg.meta.get("val") if isinstance(arg, fx.Node) else arg
    return val.dtype if isinstance(val, torch.Tensor) else torch.float32


def _flat_nodes(args: object) -> Iterator[fx.Node]:
    if isinstance(args, fx.Node):
        yield args
    elif isinstance(args, (tuple, list)):
        for a in args:
            yield from _flat_nodes(a)
    elif isinstance(args, dict):
        for a in args.values():
            yield from _flat_nodes(a)


def _bits(operand: _Operand) -> int:
    """The operand's bits: its quantizer's, at most its dtype's (a grid finer than float32 --
    a quantizer still free to grow, as in QASSO's warm-up -- computes in float, 32 bits)."""
    float_bits = dtype_bits(operand.dtype)
    return min(rounded_bits(operand.quantizer), float_bits) if operand.quantizer is not None else float_bits


@dataclass(frozen=True)
class _Op:
    """One multiplying op of the graph: what it is, its MACs and the arguments it multiplies."""

    node: fx.Node
    kind: str
    macs: int
    operands: list[object]  # the multiplied arguments; a weight is looked for among them
    source: str  # 'rule' (geta's MAC table) or 'flop_counter' (torch's, for ops without a rule)


def _fallback_operands(counter: _Counter, node: fx.Node) -> list[object]:
    """[input activation, weight] of an op without a rule: its first activation and first matrix
    parameter among its (flattened) arguments, e.g. the input and W_ih of ``aten.lstm``."""
    args = list(_flat_nodes((node.args, node.kwargs)))
    refs = {id(a): counter.operand(a).ref for a in args}
    weight = next(
        (a for a in args if (r := refs[id(a)]) is not None and r.is_param and r.tensor.dim() >= 2), None
    )
    act = next((a for a in args if refs[id(a)] is None and isinstance(a.meta.get("val"), torch.Tensor)), None)
    return [a for a in (act, weight) if a is not None]


def _ops(counter: _Counter) -> Iterator[_Op | str]:
    """Every multiplying op of the graph in order; a str for an op with a matrix parameter whose
    cost neither geta's rules nor torch's FLOP counter know ('target (module path)')."""
    graph = counter.graph
    for node in graph.call_nodes():
        rule = mac_rule(node.target)
        if rule is not None:
            operands = [node.args[i] for i in rule.operands if i < len(node.args)]
            yield _Op(node, rule.kind_of(node), rule.macs(node), operands, "rule")
            continue
        macs = flop_macs(node) if _is_op(node) else None
        if macs is not None:
            yield _Op(node, op_name(node), macs, _fallback_operands(counter, node), "flop_counter")
        elif _has_matrix_param(counter, node):
            yield f"{node.target} ({graph.module_paths.get(node, node.name)})"


def _is_op(node: fx.Node) -> bool:
    """Not a quantizer and not a look-through op (they pass operands on, they multiply nothing)."""
    packet = getattr(node.target, "overloadpacket", node.target)
    return packet is not torch.ops.geta.fake_quant and not _looks_through(packet)


def _slots(counter: _Counter, op: _Op) -> tuple[_Operand | None, _Operand, _Operand]:
    """(weight or None, the weight slot, the activation slot) of ``op``'s operands."""
    operands = [counter.operand(a) for a in op.operands]
    if not operands:  # (an op of the FLOP counter with no tensor argument of its own)
        operands = [_Operand(None, None, _dtype(op.node))]
    weight = next((o for o in operands if o.ref is not None), None)
    slot_w = weight if weight is not None else operands[min(1, len(operands) - 1)]
    slot_a = next((o for o in operands if o is not slot_w), slot_w)
    return weight, slot_w, slot_a


def _layer(counter: _Counter, op: _Op) -> LayerReport:
    weight, slot_w, slot_a = _slots(counter, op)
    b_w, b_a = _bits(slot_w), _bits(slot_a)
    node = op.node
    refs = [counter.operand(a).ref for a in _flat_nodes((node.args, node.kwargs))]
    fresh = counter.new_params([r for r in refs if r is not None])
    size = sum(
        r.tensor.numel() * (b_w if weight is not None and r is weight.ref else dtype_bits(r.tensor.dtype))
        for r in fresh
    )
    n_quant = counter.new_quantizers(slot_w.quantizer, slot_a.quantizer)
    return LayerReport(
        name=counter.layer_name(node, weight.ref if weight is not None else None, whole=op.source != "rule"),
        kind=op.kind,
        macs=op.macs,
        weight_bits=b_w,
        act_bits=b_a,
        params=sum(r.tensor.numel() for r in fresh),
        size_bits=size + FP32_BITS * n_quant,
        quantizers=n_quant,
        weighted=weight is not None,
        quantized=slot_w.quantizer is not None or slot_a.quantizer is not None,
        source=op.source,
    )


@dataclass(frozen=True, eq=False)
class LayerCost:
    """The cost terms of one multiplying op, by identity: MACs and the quantizers setting its bits.

    BOPs of the op = ``macs`` · b_w · b_a, where b_w is the bit width of ``weight_quantizer``
    (``weight_bits`` when it is None: the float width of the operand) and b_a likewise.
    ``weight`` is the parameter the op multiplies (None for activation x activation products).
    """

    macs: int
    weight: torch.Tensor | None
    weight_quantizer: LearnableQuantizer | None
    act_quantizer: LearnableQuantizer | None
    weight_bits: int  # dtype bits of an unquantized weight operand
    act_bits: int  # dtype bits of an unquantized activation operand


def layer_costs(model: nn.Module, example_inputs: object) -> list[LayerCost]:
    """Every multiplying op of ``model`` with its MACs and quantizers (the terms of its BOPs).

    Counted exactly as `report` counts (same capture, same operand tracing), so a bit-width
    allocation computed from these terms gives the BOPs `report` measures.
    """
    counter = _Counter(model, capture(model, example_inputs))
    costs: list[LayerCost] = []
    for op in _ops(counter):
        if isinstance(op, str):
            continue
        weight, slot_w, slot_a = _slots(counter, op)
        costs.append(
            LayerCost(
                macs=op.macs,
                weight=weight.ref.tensor if weight is not None and weight.ref is not None else None,
                weight_quantizer=slot_w.quantizer,
                act_quantizer=slot_a.quantizer if slot_a is not slot_w else None,
                weight_bits=dtype_bits(slot_w.dtype),
                act_bits=dtype_bits(slot_a.dtype),
            )
        )
    return costs


def input_shapes(example_inputs: object) -> tuple[tuple[int, ...], ...]:
    """Shapes of the tensors among ``example_inputs`` (positional, then keyword by name)."""
    args, kwargs = normalize_inputs(example_inputs)
    values = [*args, *(kwargs[k] for k in sorted(kwargs))]
    return tuple(tuple(v.shape) for v in values if isinstance(v, torch.Tensor))


def dense_counts(model: nn.Module, graph: Graph, example_inputs: object) -> DenseCounts:
    """MACs per layer and parameters of ``model`` from its captured ``graph`` (shapes only).

    Counted as `report` counts them; bits are not read, so a model on the ``meta`` device works.
    """
    counter = _Counter(model, graph)
    layers: list[tuple[str, int]] = []
    for op in _ops(counter):
        if isinstance(op, str):
            continue
        weight, _, _ = _slots(counter, op)
        ref = weight.ref if weight is not None else None
        layers.append((counter.layer_name(op.node, ref, whole=op.source != "rule"), op.macs))
    params, _ = _other_params(model, _Counter(model, graph))  # nothing counted yet: every parameter
    return DenseCounts(sum(m for _, m in layers), params, tuple(layers), input_shapes(example_inputs))


def _has_matrix_param(counter: _Counter, node: fx.Node) -> bool:
    """Does ``node`` consume a parameter of rank >= 2 (a likely multiplying op we cannot count)?

    Quantizers and look-through ops pass weights on to the op that multiplies them.
    """
    packet = getattr(node.target, "overloadpacket", node.target)
    if packet is torch.ops.geta.fake_quant or _looks_through(packet):
        return False
    for arg in _flat_nodes((node.args, node.kwargs)):
        ref = counter.operand(arg).ref
        if ref is not None and ref.is_param and ref.tensor.dim() >= 2:
            return True
    return False


def _other_params(model: nn.Module, counter: _Counter) -> tuple[int, int]:
    """(count, bits) of the parameters no layer counted; quantizer scalars are excluded."""
    scalars = {id(p) for m in model.modules() if isinstance(m, LearnableQuantizer) for p in m.parameters()}
    count = bits = 0
    for p in model.parameters():  # deduplicated by identity
        if id(p) in counter.seen_tensors or id(p) in scalars:
            continue
        count += p.numel()
        bits += p.numel() * dtype_bits(p.dtype)
    return count, bits


def report(
    model: nn.Module,
    example_inputs: object,
    *,
    dense: CompressionReport | DenseCounts | nn.Module | None = None,
) -> CompressionReport:
    """Measure MACs, bit widths, BOPs and sizes of ``model`` called on ``example_inputs``.

    ``dense`` is the reference of the relative numbers: a `CompressionReport`, `DenseCounts` or
    a model (run on the same inputs) — typically the original float model. Without it, a module
    made by `geta.convert` is compared with the original model's counts it carries (recorded by
    `geta.prepare`); any other model with its own MACs and parameter count, so an unquantized
    model has ``relative_bops == 1``.

    >>> import torch, geta
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> r = geta.report(model, (torch.randn(3, 8),))
    >>> [layer.macs for layer in r.layers], r.relative_bops
    ([96, 24], 1.0)
    """
    graph = capture(model, example_inputs)
    counter = _Counter(model, graph)
    layers: list[LayerReport] = []
    unknown: list[str] = []
    for op in _ops(counter):
        if isinstance(op, str):
            unknown.append(op)
        else:
            layers.append(_layer(counter, op))
    other_count, other_bits = _other_params(model, counter)
    own_macs = sum(layer.macs for layer in layers)
    own_params = sum(layer.params for layer in layers) + other_count
    if dense is None and isinstance(getattr(model, DENSE_COUNTS_ATTR, None), DenseCounts):
        dense = getattr(model, DENSE_COUNTS_ATTR).for_inputs(input_shapes(example_inputs))
    if isinstance(dense, nn.Module):
        dense = report(dense, example_inputs)
    return CompressionReport(
        layers=layers,
        other_params=other_count,
        other_size_bits=other_bits,
        dense_macs=own_macs if dense is None else dense.macs,
        dense_params=own_params if dense is None else dense.params,
        unknown_ops=unknown,
    )
