"""bfloat16: geta's invariants under CPU autocast and on a bf16 model, and one training run.

- zero invariance (docs/method.md §2.3) under ``torch.autocast(bfloat16)``: converting a plan whose
  zeroed units are removed leaves the autocast outputs of the zoo models unchanged;
- a model cast to bfloat16 (weights and inputs) trains with QASSO through all four stages and
  ends with the target sparsity and integer bits in range, and its converted form still
  computes the same function up to bf16 rounding;
- dtypes the fake-quantizer cannot take fail with a message naming the dtype.
"""

from __future__ import annotations

import pytest
import torch

import geta
from geta.optim import QASSO, Schedule, Stage
from geta.testing import max_relative_error, model_outputs, zero_random_groups, zoo

CONFIG = geta.Config(target_sparsity=0.5, weight_bits=(4, 8), act_bits=(4, 8))


def _to(inputs: tuple, device: torch.device, dtype: torch.dtype | None = None) -> tuple:
    return tuple(
        t.to(device, dtype if dtype is not None and t.is_floating_point() else t.dtype) for t in inputs
    )


@pytest.mark.parametrize("name", ["resnet", "decoder"])
def test_zero_invariance_under_bf16_autocast(name: str, device: torch.device) -> None:
    model, inputs = zoo.build(name)
    plan = geta.prepare(model, inputs, CONFIG)
    zero_random_groups(plan, fraction=0.5, seed=0)
    model.eval()
    small = geta.convert(model, plan).to(device)
    model, inputs = model.to(device), _to(inputs, device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        before = model_outputs(model, inputs)
        after = model_outputs(small, inputs)
    assert before.dtype == torch.bfloat16
    assert max_relative_error(after, before) <= 1e-2  # the same bf16 kernels on fewer channels


@pytest.mark.parametrize("autocast", [False, True], ids=["bf16 model", "autocast"])
def test_training_run_in_bf16(autocast: bool, device: torch.device) -> None:
    model, inputs = zoo.build("resnet")
    dtype = torch.float32 if autocast else torch.bfloat16
    model, inputs = model.to(device, dtype), _to(inputs, device, dtype)
    plan = geta.prepare(model, inputs, CONFIG)
    schedule = Schedule(warmup=1, projection=2, joint=4, cooldown=2, pruning_periods=2)
    opt = QASSO(plan, lr=0.01, schedule=schedule, momentum=0.9)
    for _ in range(schedule.total):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(*inputs)
        loss = out.float().square().mean()
        assert bool(torch.isfinite(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert opt.stage is Stage.COOLDOWN
    assert plan.group_sparsity() == pytest.approx(0.5, abs=0.1)
    bits = opt.frozen_bits
    assert bits is not None and torch.equal(bits, bits.round()) and bool(((bits >= 4) & (bits <= 8)).all())
    assert all(p.dtype == dtype for n, p in model.named_parameters() if "quantizer" not in n and p.dim() > 1)
    model.eval()
    small = geta.convert(model, plan)
    assert max_relative_error(model_outputs(small, inputs), model_outputs(model, inputs)) <= 2e-2


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.float8_e4m3fn])
def test_unsupported_dtypes_fail_naming_the_dtype(dtype: torch.dtype) -> None:
    x = torch.tensor([1.0, -2.0]).to(dtype)
    with pytest.raises(TypeError, match=str(dtype).replace(".", r"\.")):
        geta.quant.fake_quant(x, torch.tensor(0.5), torch.tensor(1.0), torch.tensor(1.0))
