"""The QADG keeps the float model's search space: quantizers never change the groups."""

from __future__ import annotations

import pytest
import torch

import geta
from geta.graph.prune_group import PruneGroup
from geta.prepare import analyze_model
from geta.testing import zoo


def _signature(groups: list[PruneGroup]) -> list[tuple]:
    return [
        (
            g.size,
            g.prunable,
            tuple(sorted((id(s.tensor), s.dim, tuple(s.index.flatten().tolist())) for s in g.slices)),
        )
        for g in groups
    ]


@pytest.mark.parametrize("name", ["plain_cnn", "resnet", "inception", "shufflenet", "hf_llama", "hf_bert"])
def test_quantized_model_has_the_float_models_groups(name: str) -> None:
    model, inputs = zoo.build(name)
    config = geta.Config(weight_bits=(4, 8), act_bits=(4, 8))
    _, float_plan = analyze_model(model, inputs, config)
    plan = geta.prepare(model, inputs, config)
    assert plan.bindings, "quantizers were attached"
    _, again = analyze_model(model, inputs, config)  # capture of the model WITH quantizers
    assert _signature(again.groups) == _signature(float_plan.groups) == _signature(plan.groups)
    # the captured graph holds one fake-quant node per quantizer
    nodes = [n for n in again.graph.call_nodes() if n.target == torch.ops.geta.fake_quant.default]
    assert len(nodes) == len(plan.bindings)


def test_preparing_twice_reuses_quantizers() -> None:
    model, inputs = zoo.build("resnet")
    config = geta.Config(act_bits=(4, 8))
    first = geta.prepare(model, inputs, config)
    second = geta.prepare(model, inputs, config)
    assert [id(b.quantizer) for b in first.bindings] == [id(b.quantizer) for b in second.bindings]


def test_quantizers_are_bound_by_identity() -> None:
    model, inputs = zoo.build("plain_cnn")
    plan = geta.prepare(model, inputs, geta.Config(act_bits=(4, 8)))
    params = {id(p) for p in model.parameters()}
    for b in plan.bindings:
        if b.tensor is not None:
            assert id(b.tensor) in params
            assert plan.weight_quantizer(b.tensor) is b.quantizer
        assert b.quantizer in list(b.module.modules())
