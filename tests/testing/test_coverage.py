"""`check_model`, the per-model check of the coverage run (`make zoo`, docs/coverage.md).

The unit tests pin what it measures on models small enough to count by hand; the fast subset
runs a few Hugging Face families of the coverage run (tiny configs, transformers only) through
the same function, so that `make test` catches a regression the full run would show.
"""

from __future__ import annotations

import importlib
import pathlib
import sys
from types import ModuleType

import pytest
import torch
from torch import nn

from geta.testing.coverage import CoverageResult, check_model, general_reason

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_an_mlp_passes_with_its_hidden_units_as_the_whole_share() -> None:
    model = _mlp()
    result = check_model(model, (torch.randn(2, 4),))
    assert isinstance(result, CoverageResult)
    assert result.passed and result.stage == "ok" and result.error is None
    assert (result.groups, result.prunable_groups, result.units, result.zeroed) == (2, 1, 8, 4)
    # the head (the last Linear, nearest the output) is left out: the first layer is all that
    # counts, and every element of it lies on a hidden unit
    assert result.prunable_share == 1.0
    assert result.params == 4 * 8 + 8 + 8 * 2 + 2
    assert result.params_after < sum(p.numel() for p in model.parameters())
    assert result.frozen == {"feeds the model output": 1}
    assert set(result.seconds) == {"prepare", "convert"}


class Embedded(nn.Module):
    """An embedding, a layer norm'd body and a head: only fc1/fc2 count in the share."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.norm = nn.LayerNorm(6)
        self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.embed(ids))
        return self.head(h + self.fc2(torch.relu(self.fc1(h))))


def test_the_share_leaves_out_embeddings_and_head_and_counts_elements_once() -> None:
    result = check_model(Embedded(), (torch.randint(0, 10, (2, 5)),))
    assert result.passed
    # counted: norm (6 + 6), fc1 (72 + 12), fc2 (72 + 6) = 174; removable: fc1's rows and bias
    # (84) and fc2's columns (72) — the 12 hidden units; the rest sits on the normalised width
    assert result.prunable_share == pytest.approx((84 + 72) / 174)


def test_a_model_with_nothing_prunable_fails_as_no_removal() -> None:
    result = check_model(nn.Linear(4, 2), (torch.randn(2, 4),))
    assert not result.passed
    assert result.stage == "no-removal"
    assert result.prunable_share == 0.0


class Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ torch.ones(3, 3)  # x has 4 features: the model's own forward fails


def test_a_failure_is_recorded_not_raised() -> None:
    result = check_model(Broken(), (torch.randn(2, 4),))
    assert not result.passed and result.stage == "prepare"
    assert result.error is not None and result.error.startswith("CaptureError")


def test_general_reason_drops_node_numbers() -> None:
    assert general_reason("aten.roll.default reorders a channel dimension at roll_3") == (
        "aten.roll.default reorders a channel dimension at roll"
    )
    assert general_reason("feeds the model output") == "feeds the model output"


# --- the fast subset of the coverage run -------------------------------------------------------


def _families() -> ModuleType:
    """bench.coverage_hf: the tiny HF configs of the coverage run (the repository root on the path)."""
    pytest.importorskip("transformers")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("bench.coverage_hf")


@pytest.mark.parametrize("family", ["distilbert", "gpt_neox", "mistral", "phi3", "t5"])
def test_hf_family_converts_exactly_with_most_weights_prunable(family: str) -> None:
    hf = _families()
    assert family in hf.FAST
    torch.manual_seed(0)
    model, inputs = hf.FAMILIES[family]()
    result = check_model(model, inputs)
    assert result.passed, (result.stage, result.error)
    assert result.prunable_share >= 0.9, result.frozen
