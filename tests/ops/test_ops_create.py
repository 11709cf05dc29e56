"""Tensors a model creates: a uniform fill takes the channels it meets, ``*_like`` its input's.

``torch.zeros((1, self.n_heads, T, S))`` (T5's position bias of cross-attention) is added to
the attention scores; labelling its dims "no channel" froze the heads it met. A tensor of one
value everywhere is the same tensor when positions are removed, so its dims now merge with
the channels they meet; whether the model's code builds it at the pruned size is left to the
trial conversion (a size fixed in the code freezes the group, never breaks convert).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import geta
from geta.testing import max_relative_error, model_outputs, zero_random_groups


def _w(module: nn.Module) -> torch.Tensor:
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


class Filled(nn.Module):
    """conv1 -> (+ a filled tensor of conv1's width) -> conv2; ``kind`` picks how it is made."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.width = 8  # a size kept in an attribute that convert does not update

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        if self.kind == "zeros":  # shape from the activation: follows pruning
            h = h + torch.zeros(1, h.shape[1], 1, 1)
        elif self.kind == "new_full":
            h = h * h.new_full((1, h.shape[1], 1, 1), 2.0)
        elif self.kind == "ones_like":
            h = h + torch.ones_like(h)
        else:  # "stale": a size fixed in the module
            h = h + torch.full((1, self.width, 1, 1), 0.5)
        return self.conv2(h)


def _conv1_group(plan: geta.Plan, model: Filled) -> geta.PruneGroup:
    weight = _w(model.conv1)
    (group,) = [g for g in plan.groups if any(s.tensor is weight and s.dim == 0 for s in g.slices)]
    return group


@pytest.mark.parametrize("kind", ["zeros", "new_full", "ones_like"])
def test_a_filled_tensor_shaped_from_the_activation_keeps_its_channels_prunable(kind: str) -> None:
    model, inputs = Filled(kind).eval(), (torch.randn(2, 3, 6, 6),)
    plan = geta.prepare(model, inputs, geta.Config(act_bits=(4, 8)))
    assert _conv1_group(plan, model).prunable, _conv1_group(plan, model).reason
    assert zero_random_groups(plan, fraction=0.5, seed=0) > 0
    ref = model_outputs(model, inputs)
    small = geta.convert(model, plan)
    assert small.conv1.out_channels < 8
    assert max_relative_error(model_outputs(small, inputs), ref) <= 1e-4


def test_a_filled_tensor_of_a_fixed_size_freezes_through_the_trial_conversion() -> None:
    model, inputs = Filled("stale").eval(), (torch.randn(2, 3, 6, 6),)
    plan = geta.prepare(model, inputs)
    group = _conv1_group(plan, model)
    assert not group.prunable
    assert "breaks the model's forward" in str(group.reason)
    zero_random_groups(plan, fraction=0.5, seed=0)
    ref = model_outputs(model, inputs)
    assert max_relative_error(model_outputs(geta.convert(model, plan), inputs), ref) <= 1e-4
