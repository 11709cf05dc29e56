"""Bad input gives a geta error that names the problem and the fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import geta


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


@pytest.mark.parametrize("inputs", [torch.randn(2, 4), "x", 3, None])
def test_example_inputs_must_be_tuple_or_dict(inputs: object) -> None:
    with pytest.raises(geta.CaptureError, match="tuple of positional inputs or a dict"):
        geta.prepare(_mlp(), inputs)


def test_model_failing_its_own_forward() -> None:
    with pytest.raises(geta.CaptureError, match=r"own forward failed.*mat1 and mat2"):
        geta.prepare(_mlp(), (torch.randn(2, 5),))


def test_untraceable_model_is_a_capture_error() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # Python control flow on a tensor value
                return self.fc(x)
            return -self.fc(x)

    with pytest.raises(geta.CaptureError, match=r"torch\.export could not capture DataDependent"):
        geta.prepare(DataDependent(), (torch.ones(2, 4),))


def test_config_and_model_types_are_checked() -> None:
    with pytest.raises(geta.ConfigError, match=r"must be a geta\.Config"):
        geta.prepare(_mlp(), (torch.randn(2, 4),), {"target_sparsity": 0.5})  # type: ignore[arg-type]
    with pytest.raises(geta.ConfigError, match=r"torch\.nn\.Module"):
        geta.prepare(lambda x: x, (torch.randn(2, 4),))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"target_sparsity": 1.0}, r"target_sparsity=1.0 must be in \[0, 1\)"),
        ({"target_sparsity": -0.1}, "target_sparsity=-0.1"),
        ({"target_sparsity": float("nan")}, "target_sparsity=nan"),
        ({"weight_bits": (8, 4)}, r"lo \(8\) must be <= hi \(4\)"),
        ({"weight_bits": (1, 8)}, r"integer in \[2, 16\], got 1"),
        ({"weight_bits": (4, 17)}, r"integer in \[2, 16\], got 17"),
        ({"weight_bits": 4}, r"must be a \(lo, hi\) pair"),
        ({"act_bits": (4, 4.5)}, "got 4.5"),
        ({"weight_bits": (4, 8), "init_bits": 6}, r"init_bits=6 must be an integer in \[8, 32\]"),
        ({"ste": "round"}, "ste='round' is not one of"),
        ({"exclude_prune": "fc*"}, "tuple of fnmatch patterns"),
        ({"group_divisible": 0}, "group_divisible=0"),
    ],
)
def test_invalid_config_names_field_value_and_fix(kwargs: dict, match: str) -> None:
    with pytest.raises(geta.ConfigError, match=match):
        geta.Config(**kwargs)


def test_valid_config_round_trips() -> None:
    c = geta.Config(target_sparsity=0.0, weight_bits=[2, 16], act_bits=None, ste="fixed")  # type: ignore[arg-type]
    assert c.weight_bits == (2, 16) and c.ste is geta.STE.FIXED


def test_convert_rejects_a_foreign_plan() -> None:
    model, other = _mlp(), _mlp()
    plan = geta.prepare(model, (torch.randn(2, 4),))
    with pytest.raises(geta.ConvertError, match="different model"):
        geta.convert(other, plan)


def test_prepare_leaves_batchnorm_statistics_alone() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    geta.prepare(model, (torch.randn(2, 3, 6, 6) * 5,), geta.Config(act_bits=(4, 8)))
    after = model.state_dict()
    for k, v in before.items():
        if "running" in k or "num_batches" in k:
            assert torch.equal(after[k], v), k
    assert model.training


def test_a_model_that_cannot_be_copied_is_analysed_and_convert_says_why() -> None:
    class HoldsAGenerator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)
            self.ids = (i for i in range(3))  # copy.deepcopy cannot copy a generator

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(x)))

    model = HoldsAGenerator()
    with pytest.warns(RuntimeWarning, match="trial conversion could not run"):
        plan = geta.prepare(model, (torch.randn(2, 4),))
    assert [g.size for g in plan.prunable_groups] == [8]
    with pytest.raises(geta.ConvertError, match=r"copy\.deepcopy"):
        geta.convert(model, plan)
