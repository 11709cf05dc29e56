"""The interpreter never fails on an op: a handler that raises freezes what its op touches.

The reason of every frozen group names the op and the error, and the rest of the model is
analysed as usual (its other groups stay prunable and convert still equals the zeroed model).
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

import geta
from geta.graph.context import Context, Labels
from geta.ops.registry import register_op
from geta.testing import max_relative_error, model_outputs, zero_random_groups


def _w(module: nn.Module) -> torch.Tensor:
    """The weight parameter itself (`prepare` parametrizes it with a quantizer)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


@torch.library.custom_op("geta_tests::double", mutates_args=())
def double(x: torch.Tensor) -> torch.Tensor:
    """A custom op with a deliberately broken handler below."""
    return x * 2


@double.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@register_op(torch.ops.geta_tests.double.default)
def broken(ctx: Context, node: fx.Node) -> Labels:
    raise RuntimeError("deliberately broken handler")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 10), nn.Linear(10, 7), nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(double(self.fc1(x)))  # the broken handler sits between fc1 and fc2
        return self.fc3(torch.relu(self.fc2(h)))


def test_a_raising_handler_freezes_its_op_with_a_reason() -> None:
    model, inputs = Net(), (torch.randn(4, 6),)
    plan = geta.prepare(model, inputs)
    touched = [
        g
        for g in plan.groups
        for s in g.slices
        if (s.tensor is _w(model.fc1) and s.dim == 0) or (s.tensor is _w(model.fc2) and s.dim == 1)
    ]
    assert touched
    for g in touched:
        assert not g.prunable
        assert "geta_tests.double" in str(g.reason)
        assert "RuntimeError: deliberately broken handler" in str(g.reason)
    (hidden,) = plan.prunable_groups  # fc2 -> fc3 is untouched by the broken op
    assert any(s.tensor is _w(model.fc2) and s.dim == 0 for s in hidden.slices)
    assert "geta_tests.double" in plan.summary()

    zero_random_groups(plan, fraction=0.5, seed=0)
    ref = model_outputs(model, inputs)
    assert max_relative_error(model_outputs(geta.convert(model, plan), inputs), ref) <= 1e-5
