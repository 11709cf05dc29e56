"""Each op fact is declared once, with the op's handler, and every consumer reads it from there.

- a new op registered with traits and a MAC rule is counted, looked through and signed by the
  report, the product sites and the analysis without any other edit;
- no module of geta keeps a table of ops of its own (a copy that could silently go stale);
- the derived views agree with what the registry declares.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import fx, nn

import geta
from geta.graph.activation_products import nonnegative
from geta.graph.capture import capture
from geta.graph.context import Context, Labels
from geta.ops import catalog, registry
from geta.ops.macs import MacRule
from geta.ops.registry import has_trait, mac_rule, ops_with, product_kind, register_op
from geta.ops.traits import PRODUCT_KINDS, SIGN_THROUGH, VALUES_THROUGH, Trait
from geta.quant import product_calls
from geta.reporting import flops, report
from geta.reporting.count import _looks_through


@torch.library.custom_op("geta_registry_tests::keep", mutates_args=())
def keep(x: torch.Tensor) -> torch.Tensor:
    """A copy: declared SAME_VALUES below."""
    return x.clone()


@keep.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("geta_registry_tests::clip", mutates_args=())
def clip(x: torch.Tensor) -> torch.Tensor:
    """max(x, 0): declared NONNEGATIVE below."""
    return x.clamp_min(0)


@clip.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("geta_registry_tests::mul_t", mutates_args=())
def mul_t(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ wᵀ: declared with a MAC rule below."""
    return x @ w.t()


@mul_t.register_fake
def _(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], w.shape[0]))


_ops = torch.ops.geta_registry_tests


def _first(ctx: Context, node: fx.Node) -> Labels:
    return ctx.label_or_anon(node.args[0])


def _mul_t(ctx: Context, node: fx.Node) -> Labels:
    return ctx.anon(ctx.shape(node))


_MUL_T_MACS = MacRule(
    "linear", (0, 1), lambda n: math.prod(n.meta["val"].shape) * n.args[0].meta["val"].shape[-1]
)


@pytest.fixture
def new_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the three test ops, each in one call, on a copy of the registry."""
    monkeypatch.setattr(registry, "_FACTS", dict(registry._FACTS))
    register_op(_ops.keep, traits={Trait.SAME_VALUES})(_first)
    register_op(_ops.clip, traits={Trait.NONNEGATIVE})(_first)
    register_op(_ops.mul_t, macs=_MUL_T_MACS)(_mul_t)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mul_t(keep(clip(x)), keep(self.w))


def test_a_new_op_shows_up_in_every_view(new_ops: None) -> None:
    x = torch.randn(3, 4)
    graph = capture(Net(), (x,))
    mul = next(n for n in graph.call_nodes() if n.target == _ops.mul_t.default)
    # MAC counting: its rule counts it, its weight is found through the SAME_VALUES op
    layer = next(r for r in report(Net(), (x,)).layers if r.kind == "linear")
    assert layer.macs == 3 * 5 * 4 and layer.weighted and layer.params == 20 and layer.source == "rule"
    assert mac_rule(_ops.mul_t.default) is _MUL_T_MACS
    # look-through (count) and same values (analysis binds quantizers through it)
    assert _looks_through(_ops.keep) and not _looks_through(_ops.clip)
    assert _ops.keep in ops_with(Trait.SAME_VALUES)
    # sign: the activation operand is clip(x) seen through keep; the weight is signed
    assert nonnegative(mul.args[0]) and not nonnegative(mul.args[1])
    # the FLOP-counter fallback does not run ops declared to move values
    keep_node = mul.args[0]
    assert not flops._candidate(keep_node)


def test_the_test_ops_are_unknown_without_their_registration() -> None:
    """The views above come from the registration (no other table knows these ops)."""
    for op in (_ops.keep, _ops.clip, _ops.mul_t):
        assert registry.facts_for(op.default) is None
        assert not _looks_through(op) and mac_rule(op.default) is None


def _modules() -> Iterator[Any]:
    for info in pkgutil.walk_packages(geta.__path__, "geta."):
        if info.name.startswith(("geta.cli", "geta.recipes")) or info.name in {
            m for _, m in catalog.LIBRARIES
        }:
            continue
        yield importlib.import_module(info.name)


def _op_objects(value: object) -> list[Any]:
    """The op objects held by a module-level collection (keys of a mapping included)."""
    if isinstance(value, dict):
        value = list(value)
    if not isinstance(value, (list, tuple, set, frozenset)):
        return []
    return [v for v in value if isinstance(v, (torch._ops.OpOverloadPacket, torch._ops.OpOverload))]


def test_no_op_table_outside_the_registry() -> None:
    """Outside `geta.ops`, no module keeps a collection of ops; inside, every op listed in one is
    registered (the lists are the arguments of `register_op`, not a second table)."""
    tables = {}
    for module in _modules():
        for name, value in vars(module).items():
            ops = _op_objects(value)
            if not ops:
                continue
            if not module.__name__.startswith("geta.ops."):
                tables[f"{module.__name__}.{name}"] = ops
            else:
                missing = [op for op in ops if registry.facts_for(op) is None]
                assert not missing, f"{module.__name__}.{name} lists unregistered ops {missing}"
    assert not tables, f"op tables outside the registry: {sorted(tables)}"


def test_derived_views_agree_with_the_registry() -> None:
    for op in registry.registered_ops():
        facts = registry.facts_for(op)
        assert facts is not None
        assert has_trait(op, *facts.traits) == bool(facts.traits)
        assert _looks_through(op) == bool(facts.traits & VALUES_THROUGH)
        assert (op in ops_with(*SIGN_THROUGH)) == bool(facts.traits & SIGN_THROUGH)
        assert not (Trait.NONNEGATIVE in facts.traits and facts.traits & SIGN_THROUGH), op
        if facts.product is not None:  # a product multiplies: its MACs are counted as that kind
            assert facts.macs is not None and facts.macs.kind == facts.product, op
            assert product_kind(op) == facts.product
    kinds = {product_kind(op) for op in registry.registered_ops()} - {None}
    assert kinds == set(PRODUCT_KINDS)  # every kind intercepted at run time has graph ops
    assert product_calls.FUNCTIONS == {f: k.name for k in PRODUCT_KINDS.values() for f in k.functions}


@pytest.mark.parametrize(
    "kwargs",
    [{"traits": {"keeps sign"}}, {"product": "conv"}, {"product": "matmul"}],
    ids=["trait-not-a-Trait", "unknown-product", "product-without-macs"],
)
def test_register_op_rejects_bad_facts(kwargs: dict[str, Any]) -> None:
    with pytest.raises(geta.GetaError, match="register_op"):
        register_op(object(), **kwargs)


def test_a_second_registration_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_FACTS", dict(registry._FACTS))
    with pytest.raises(geta.GetaError, match="already registered"):
        register_op(torch.ops.aten.relu, traits={Trait.KEEPS_SIGN})(_first)
