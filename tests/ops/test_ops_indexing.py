"""Rows picked by index tensors (tokens routed to experts) keep their channels prunable.

``h[perm]``, ``h.repeat_interleave(r, dim=0)`` and ``torch.diff(h, dim=0)`` act on the token dim
only; routing bookkeeping (``histc`` counts, boolean masks, ``idx[perm] = arange``) touches no
channel. None of them freezes the hidden units of ``fc1``; convert equals the zeroed model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

import geta
from geta.testing import max_relative_error, model_outputs, zero_random_groups


class RoutedRows(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (6, 4)
        h = torch.relu(self.fc1(x))  # (6, 8): 8 hidden units
        perm = torch.argsort(x[:, 0])  # (6,) a data-dependent token order
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(6)  # index_put_ on token ids
        counts = torch.histc(x[:, 0], bins=3)  # (3,)
        keep = (x[:, 1:2] > -10) & (counts.sum() > 0)  # (6, 1) boolean routing mask
        rows = h[perm].repeat_interleave(2, dim=0)  # (12, 8)
        steps = torch.diff(rows, dim=0)  # (11, 8)
        h = rows[::2][inverse] * keep + steps[::2][:6]  # (6, 8)
        return self.fc2(h)


def _w(module: nn.Module) -> torch.Tensor:
    return module.parametrizations.weight.original if parametrize.is_parametrized(module) else module.weight


def test_token_indexing_keeps_hidden_units_prunable() -> None:
    model, inputs = RoutedRows(), (torch.randn(6, 4),)
    plan = geta.prepare(model, inputs)
    assert not plan.analysis.unknown_ops
    (group,) = [g for g in plan.groups if any(s.tensor is _w(model.fc1) and s.dim == 0 for s in g.slices)]
    assert group.prunable, group.reason
    assert any(s.tensor is _w(model.fc2) and s.dim == 1 for s in group.slices)

    zero_random_groups(plan, fraction=0.5, seed=0)
    ref = model_outputs(model, inputs)
    small = geta.convert(model, plan)
    assert max_relative_error(model_outputs(small, inputs), ref) <= 1e-5
    assert small.fc1.out_features == 4
