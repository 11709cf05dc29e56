"""The zero-invariance matrix: every zoo model x with/without activation quantizers.

prepare -> zero half of the prunable units -> convert must give fewer parameters and the same
outputs as the zeroed model; the converted model is made of the user's own module classes.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.parametrize import type_before_parametrizations

import geta
from geta.testing import max_relative_error, model_outputs, zero_random_groups, zoo

NAMES = zoo.names()


def _nparams(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("act_bits", [None, (4, 8)], ids=["weights", "weights+acts"])
@pytest.mark.parametrize("name", NAMES)
def test_convert_equals_zeroed_model(name: str, act_bits: tuple[int, int] | None) -> None:
    model, inputs = zoo.build(name)
    plan = geta.prepare(model, inputs, geta.Config(weight_bits=(4, 8), act_bits=act_bits))
    zeroed = zero_random_groups(plan, fraction=0.5, seed=0)
    ref = model_outputs(model, inputs)
    small = geta.convert(model, plan)
    out = model_outputs(small, inputs)
    assert max_relative_error(out, ref) <= 1e-4
    if zeroed:
        assert _nparams(small) < _nparams(model)
    for new, old in zip(small.modules(), model.modules()):  # the user's own classes (or subclasses)
        assert issubclass(type_before_parametrizations(new), type_before_parametrizations(old))


@pytest.mark.parametrize("name", ["resnet", "inception", "mobilenet", "hf_llama", "hf_gpt2"])
def test_every_group_alone_converts(name: str) -> None:
    """Zeroing all but one unit of any single prunable group keeps the function."""
    model, inputs = zoo.build(name)
    plan = geta.prepare(model, inputs, geta.Config())
    for g in plan.prunable_groups:
        snapshot = {id(p): p.detach().clone() for p in model.parameters()}
        g.zero_(torch.arange(1, g.size))
        ref = model_outputs(model, inputs)
        small = geta.convert(model, plan, verify=False)
        assert max_relative_error(model_outputs(small, inputs), ref) <= 1e-4, g
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(snapshot[id(p)])


def test_zero_groups_reported_exactly() -> None:
    model, inputs = zoo.build("resnet")
    plan = geta.prepare(model, inputs)
    total = plan.num_prunable_units
    zeroed = zero_random_groups(plan, fraction=0.5, seed=1)
    assert plan.group_sparsity() == pytest.approx(zeroed / total)
    removed = sum(int(g.is_zero().sum()) for g in plan.prunable_groups)
    assert removed == zeroed
