"""The compression benchmark's ``lm`` task: disjoint splits, one step budget for every method."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `bench`

from bench.compression_tasks import BATCH, TASKS, compression_epochs, fit

from bench import compression_lm as lm


def test_calibration_mask_takes_whole_blocks_at_the_stated_rate() -> None:
    mask = lm.calibration_mask(10 * lm.BLOCK_WINDOWS * lm.CALIB_EVERY)
    assert int(mask.sum()) * lm.CALIB_EVERY == len(mask)
    blocks = mask.view(-1, lm.BLOCK_WINDOWS)
    assert bool((blocks.all(1) | ~blocks.any(1)).all())  # a block is all calibration or none


def test_splits_partition_the_pretraining_text_and_leave_the_held_out_text_apart() -> None:
    x_pre, y_pre, x_test, y_test = lm.pretraining_data()
    x_cal, y_cal, x_test2, _ = lm.calibration_data()
    assert torch.equal(x_test, x_test2)  # both phases are scored on the same held-out text
    x_all, y_all = lm._windows(lm._source(lm.PRETRAIN_MODULES))
    mask = lm.calibration_mask(len(x_all))
    assert torch.equal(x_all[mask], x_cal) and torch.equal(x_all[~mask], x_pre)
    assert torch.equal(y_all[mask], y_cal) and torch.equal(y_all[~mask], y_pre)
    assert 0.05 <= len(x_cal) / len(x_all) <= 0.10  # 5-10 % of the tokens
    assert not set(lm.HELD_OUT_MODULES) & set(lm.PRETRAIN_MODULES)
    assert torch.equal(x_test[:, 1:], y_test[:, :-1])  # targets are the next bytes


def test_every_method_gets_the_same_epochs_of_compression_data() -> None:
    for task in TASKS.values():
        totals = {name: sum(phases) for name, phases in compression_epochs(task).items()}
        assert set(totals.values()) == {task.epochs}, (task.name, totals)


class _Counting(torch.optim.SGD):
    steps = 0

    def step(self, closure=None):  # type: ignore[no-untyped-def]
        type(self).steps += 1
        return super().step(closure)


def test_fit_takes_epochs_times_full_batches_steps() -> None:
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(3 * BATCH + 5, 3), torch.randint(0, 2, (3 * BATCH + 5,))
    _Counting.steps = 0
    fit(model, _Counting(model.parameters(), lr=0.1), (x, y, x, y), 2, seed=0, lr=0.1)
    assert _Counting.steps == 2 * 3  # so equal epochs of the same split are equal step budgets
