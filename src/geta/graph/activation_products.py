"""Where a model multiplies two activations (attention's q·kᵀ and p·v), read from its graph.

A graph query (it reads op facts from `geta.ops`, so it sits beside `geta.graph.analysis`,
above the op handlers): `geta.prepare` asks it which modules run activation x activation
products and how to name and sign their operands, then quantizes those operands at the module
that runs them (`geta.quant.products`). The products are found in the captured graph, by
identity:

- a *product* is a node of an op registered with a product kind (`geta.ops.registry.product_kind`:
  matmul, mm, bmm, sdpa); it is
  an *activation product* when none of its multiplied operands is a parameter or buffer
  (seen through views, casts, parts and quantizers): ``x @ self.w`` is a weight product;
- it belongs to the innermost module of its ``nn_module_stack``, its *owner*; the owner's
  forward makes one call per product node of its whole subtree, in graph order: call k of the
  owner is the k-th of these nodes (at run time `geta.quant.products` tells the calls apart by
  their call sites, learned on a forward that runs them in this order);
- operands are named for display: 'qk.q', 'qk.k', 'pv.p', 'pv.v' for attention (an sdpa
  node, or a matmul whose output reaches the next one's first operand through scale, mask and
  softmax), 'matmul.a', 'matmul.b' otherwise; an operand never negative (after a softmax or a
  ReLU) gets an unsigned quantizer.

A module called several times must run the same products on every call, and an owner with
another owner inside it is skipped (the inner one's eager attention would change the outer
one's call count); both are warned about.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from torch import fx, nn

from geta.graph.ir import Graph
from geta.ops import catalog  # noqa: F401  (registers the built-in op facts)
from geta.ops.registry import has_trait, product_kind
from geta.ops.traits import ATTENTION, SIGN_THROUGH, Trait

__all__ = ["OperandSite", "ProductOwner", "nonnegative", "operand_sites", "product_owners"]

_OPERAND_NAMES = {"qk": ("q", "k"), "pv": ("p", "v"), "matmul": ("a", "b")}


@dataclass
class ProductOwner:
    """A module running activation products: every product call of one forward, in order."""

    module: nn.Module
    name: str  # its path ('' for the model itself)
    kinds: tuple[str, ...]  # kinds of all its product calls (MATMUL / ATTENTION), quantized or not
    quantized: dict[int, fx.Node]  # call index -> product node whose operands are activations


@dataclass(frozen=True)
class OperandSite:
    """One operand to quantize: its product call, display label and sign."""

    call: int  # index of the product call in the owner's forward
    label: str  # 'qk.q', 'pv.p', 'matmul.a', ... (unique within the owner)
    signed: bool  # False: never negative (unsigned grid)


def product_owners(model: nn.Module, graph: Graph) -> list[ProductOwner]:
    """The modules of ``model`` running activation x activation products, in graph order."""
    subtree: dict[str, list[fx.Node]] = {}  # stack key (one call of one module) -> product nodes
    path: dict[str, str] = {}  # stack key -> module path
    for node in graph.nodes:
        for key, (module_path, _) in (node.meta.get("nn_module_stack") or {}).items():
            path[key] = module_path
            if node.op == "call_function" and _kind(node) is not None:
                subtree.setdefault(key, []).append(node)
    inner = {n: list(n.meta["nn_module_stack"])[-1] for nodes in subtree.values() for n in nodes}
    active = {n for n in inner if _activation_product(graph, n)}
    owner_keys = {inner[n] for n in active}

    def pattern(key: str) -> tuple[tuple[str | None, bool], ...]:
        return tuple((_kind(n), n in active and inner[n] == key) for n in subtree.get(key, []))

    owners: dict[str, ProductOwner] = {}
    skipped: set[str] = set()
    for key in path:  # graph order; a module called twice has the keys 'x' and 'x@1'
        module_path = path[key]
        if key not in owner_keys or module_path in skipped or module_path in owners:
            continue
        nested = {path[inner[n]] for n in subtree[key] if inner[n] in owner_keys} - {module_path}
        reason = None
        if len({pattern(k) for k in path if path[k] == module_path}) > 1:
            reason = "its calls run different products"
        elif nested:
            reason = f"modules inside it ({', '.join(sorted(nested))}) have quantized products"
        if reason is not None:
            skipped.add(module_path)
            warnings.warn(
                f"geta: the products of {module_path or 'the model'} stay in float: {reason}", stacklevel=3
            )
            continue
        nodes = subtree[key]
        owners[module_path] = ProductOwner(
            model.get_submodule(module_path),
            module_path,
            tuple(str(_kind(n)) for n in nodes),
            {i: n for i, n in enumerate(nodes) if n in active and inner[n] == key},
        )
    return list(owners.values())


def operand_sites(owner: ProductOwner) -> list[OperandSite]:
    """The operands of ``owner``'s quantized calls, in each call's operand order.

    A matmul call has [a, b] ('qk.q', 'qk.k' / 'pv.p', 'pv.v' / 'matmul.a', 'matmul.b'); an
    attention call has [q, k, v, p] ('qk.q', 'qk.k', 'pv.v', 'pv.p'; p, the softmax weights, is
    made inside the call and is never negative). A repeated name gets '_1', '_2', ...
    """
    sites: list[OperandSite] = []
    used: dict[str, int] = {}
    names = _product_names(owner)
    for call, node in owner.quantized.items():
        labels = []
        for product in names[call]:
            count = used.get(product, 0)
            used[product] = count + 1
            labels.append(product if count == 0 else f"{product}_{count}")
        if owner.kinds[call] == ATTENTION:  # args (q, k, v, ...)
            qk, pv = labels
            for label, arg in (
                (f"{qk}.q", node.args[0]),
                (f"{qk}.k", node.args[1]),
                (f"{pv}.v", node.args[2]),
            ):
                sites.append(OperandSite(call, label, not nonnegative(arg)))
            sites.append(OperandSite(call, f"{pv}.p", False))
            continue
        for operand, arg in zip(_OPERAND_NAMES[names[call][0]], node.args[:2], strict=True):
            sites.append(OperandSite(call, f"{labels[0]}.{operand}", not nonnegative(arg)))
    return sites


def nonnegative(node: object) -> bool:
    """Is the value of ``node`` never negative?

    True at an op declaring `Trait.NONNEGATIVE`; followed back (first input) through ops that
    keep the sign: casts, views, parts, pools, dropout (`geta.ops.traits.SIGN_THROUGH`).
    """
    while isinstance(node, fx.Node) and node.op == "call_function":
        packet = getattr(node.target, "overloadpacket", node.target)
        if has_trait(packet, Trait.NONNEGATIVE):
            return True
        if not has_trait(packet, *SIGN_THROUGH):
            return False
        node = node.args[0]
    return False


def _product_names(owner: ProductOwner) -> dict[int, tuple[str, ...]]:
    """Call index -> ('qk', 'pv') for an sdpa call; ('qk',) then ('pv',) for a matmul whose
    output reaches the next quantized matmul's first operand; ('matmul',) else."""
    names: dict[int, tuple[str, ...]] = {}
    calls = list(owner.quantized.items())
    for i, (call, node) in enumerate(calls):
        if call in names:
            continue
        if owner.kinds[call] == ATTENTION:
            names[call] = ("qk", "pv")
        elif i + 1 < len(calls) and _feeds_first_operand(node, calls[i + 1][1]):
            names[call], names[calls[i + 1][0]] = ("qk",), ("pv",)
        else:
            names[call] = ("matmul",)
    return names


def _feeds_first_operand(first: fx.Node, second: fx.Node) -> bool:
    """Does ``first`` reach the first operand of ``second`` along first inputs (scale, mask,
    softmax, dropout, casts), without passing another product?"""
    node = second.args[0]
    while isinstance(node, fx.Node) and node.op == "call_function" and node.args:
        if node is first:
            return True
        if _kind(node) is not None:
            return False
        node = node.args[0]
    return False


def _kind(node: fx.Node) -> str | None:
    return product_kind(getattr(node.target, "overloadpacket", node.target))


def _activation_product(graph: Graph, node: fx.Node) -> bool:
    """Are all multiplied operands of ``node`` activations (none a parameter or buffer)?"""
    count = 3 if _kind(node) == ATTENTION else 2
    return not any(_from_tensor(graph, arg) for arg in node.args[:count])


def _from_tensor(graph: Graph, arg: object) -> bool:
    """Is ``arg`` a parameter or buffer, seen through views, casts, parts, quantizers and pools
    (`geta.ops.traits.SIGN_THROUGH`)?"""
    node = arg
    while isinstance(node, fx.Node):
        if node in graph.refs:
            return True
        if node.op != "call_function" or not node.args:
            return False
        packet = getattr(node.target, "overloadpacket", node.target)
        if not has_trait(packet, *SIGN_THROUGH):
            return False
        node = node.args[0]
    return False
