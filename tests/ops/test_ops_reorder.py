"""``roll`` and ``flip`` move positions along their ``dims`` only.

Swin's cyclic window shift is ``torch.roll(x, shifts, dims=(1, 2))`` over height and width; the
handler used to freeze every dim of the rolled tensor, channels included. Now only the rolled
(or flipped) dims are frozen: channels stay prunable unless they are the dim being reordered.
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


class Reordered(nn.Module):
    """conv1 -> roll/flip over ``dims`` -> conv2 (dim 1 holds conv1's channels)."""

    def __init__(self, op: str, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.op, self.dims = op, dims
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        if self.op == "roll":
            h = torch.roll(h, shifts=[1] * len(self.dims), dims=self.dims)
        else:
            h = torch.flip(h, dims=self.dims)
        return self.conv2(h)


@pytest.mark.parametrize(
    "op,dims,frozen",
    [("roll", (2, 3), False), ("flip", (3,), False), ("roll", (1,), True), ("flip", (1, 2), True)],
)
def test_only_the_reordered_dims_are_frozen(op: str, dims: tuple[int, ...], frozen: bool) -> None:
    model, inputs = Reordered(op, dims).eval(), (torch.randn(2, 3, 6, 6),)
    plan = geta.prepare(model, inputs, geta.Config(act_bits=(4, 8)))
    weight = _w(model.conv1)
    (group,) = [g for g in plan.groups if any(s.tensor is weight and s.dim == 0 for s in g.slices)]
    assert group.prunable is not frozen, group.reason
    if frozen:
        assert "reorders positions" in str(group.reason)
    zero_random_groups(plan, fraction=0.5, seed=0)
    ref = model_outputs(model, inputs)
    small = geta.convert(model, plan)
    assert max_relative_error(model_outputs(small, inputs), ref) <= 1e-4
    assert (small.conv1.out_channels < 8) is not frozen
