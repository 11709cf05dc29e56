"""Reductions that return (values, indices): the ``dim`` argument is found where each op keeps it.

``topk(x, k, dim)`` and ``kthvalue(x, k, dim)`` take k before dim; reading k as the dim crashed
`prepare` whenever k >= the tensor's rank. A top-k over channels freezes that channel space;
over any other dim the channels stay prunable, and convert equals the zeroed model.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import geta
from geta.testing import max_relative_error, model_outputs, zero_random_groups


def _w(module: nn.Module) -> torch.Tensor:
    """The weight parameter itself (`prepare` parametrizes it with a quantizer)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


class TopKMLP(nn.Module):
    """(6, 6) -> fc1 -> fc2 -> topk(k=5, dim) -> fc3; dim 1 holds fc2's output features."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.fc1, self.fc2 = nn.Linear(6, 10), nn.Linear(10, 8)
        self.fc3 = nn.Linear(5 if dim == 1 else 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        values, _ = torch.topk(h, k=5, dim=self.dim)
        return self.fc3(values)


class TopKConvNet(nn.Module):
    """(2, 3, 6, 6) -> conv1 -> conv2 -> topk(k=5, dim) -> head; dim 1 holds conv2's channels."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(5 if dim == 1 else 8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        values, _ = torch.topk(h, k=5, dim=self.dim)
        return self.head(values)


CASES = [
    pytest.param(TopKMLP(1), (torch.randn(6, 6),), "fc2", True, id="2d-over-features"),
    pytest.param(TopKMLP(0), (torch.randn(6, 6),), "fc2", False, id="2d-over-batch"),
    pytest.param(TopKConvNet(1), (torch.randn(2, 3, 6, 6),), "conv2", True, id="4d-over-channels"),
    pytest.param(TopKConvNet(-1), (torch.randn(2, 3, 6, 6),), "conv2", False, id="4d-over-width"),
]


@pytest.mark.parametrize("model,inputs,layer,frozen", CASES)
def test_topk_freezes_only_the_dim_it_ranks(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], layer: str, frozen: bool
) -> None:
    plan = geta.prepare(model, inputs)
    weight = _w(getattr(model, layer))
    (group,) = [g for g in plan.groups for s in g.slices if s.tensor is weight and s.dim == 0]
    assert group.prunable is not frozen
    if frozen:
        assert "topk" in str(group.reason)
    # the first layer's outputs never meet the top-k: always prunable
    first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    assert any(s.tensor is _w(first) and s.dim == 0 for g in plan.prunable_groups for s in g.slices)

    assert zero_random_groups(plan, fraction=0.5, seed=0) > 0
    ref = model_outputs(model, inputs)
    small = geta.convert(model, plan)
    assert max_relative_error(model_outputs(small, inputs), ref) <= 1e-5
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


class PairReductions(nn.Module):
    """kthvalue (k before dim), sort(stable=True) (dim by keyword), max.dim, var_mean over a list."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B=6, T=5, 4)
        h = torch.relu(self.fc1(x))  # (6, 5, 8): the 8 hidden units stay prunable
        kth, _ = torch.kthvalue(h, 4, 1)  # (6, 8): over T
        srt, _ = torch.sort(h, dim=1, stable=True)  # (6, 5, 8)
        mx, _ = h.max(dim=0)  # (5, 8)
        var, mean = torch.var_mean(h, dim=[0, 1])  # (8,)
        return self.fc2(kth + srt.sum(1) + mx.mean(0) + var * mean)


def test_pair_reductions_over_other_dims_keep_the_channels() -> None:
    model, inputs = PairReductions(), (torch.randn(6, 5, 4),)
    plan = geta.prepare(model, inputs)
    (group,) = [g for g in plan.groups for s in g.slices if s.tensor is _w(model.fc1) and s.dim == 0]
    assert group.prunable, group.reason
    zero_random_groups(plan, fraction=0.5, seed=0)
    ref = model_outputs(model, inputs)
    assert max_relative_error(model_outputs(geta.convert(model, plan), inputs), ref) <= 1e-5
