"""The console progress: tqdm bars per epoch and the final summary table."""

from __future__ import annotations

import io

from geta.cli.progress import TqdmReporter, summary_table
from geta.recipes import EpochStats


def test_bar_shows_stage_loss_accuracy_sparsity_and_bits() -> None:
    stream = io.StringIO()
    reporter = TqdmReporter(enabled=True, stream=stream)
    reporter.epoch_start("compress", 2, 10, "joint", batches=3, done=1)
    stats = EpochStats(loss_sum=1.5, hits=90, count=100, batches=2)
    reporter.batch(stats, {"sparsity": 0.25, "weight_bits": 3.5, "input_bits": 4.0})
    reporter.epoch_end({"phase": "compress", "epoch": 2, "stage": "joint", "loss": 0.75, "test_accuracy": 0.9,
                        "sparsity": 0.25, "weight_bits": 3.5, "input_bits": 4.0})  # fmt: skip
    text = stream.getvalue()
    assert "compress 3/10 [joint]" in text and "sparsity 0.25" in text and "w bits 3.50" in text
    assert "test acc 0.9000" in text and "2/3" in text


def test_quiet_and_non_terminal_output() -> None:
    stream = io.StringIO()
    TqdmReporter(quiet=True, stream=stream).epoch_end(
        {"phase": "dense", "epoch": 0, "stage": "dense", "loss": 1.0, "test_accuracy": 0.5}
    )
    assert stream.getvalue() == ""
    reporter = TqdmReporter(stream=stream)  # a StringIO is not a terminal: one line per epoch
    reporter.epoch_end({"phase": "dense", "epoch": 0, "stage": "dense", "loss": 1.0, "test_accuracy": 0.5})
    assert stream.getvalue() == "dense epoch 1 [dense]: loss 1.000, test acc 0.5000\n"


def test_summary_table() -> None:
    side = {"accuracy": 0.99, "params": 1000, "size_bytes": 4000, "macs": 5000}
    report = {"dense": side, "compressed": {**side, "accuracy": 0.98, "size_bytes": 100},
              "relative_bops": 0.004, "relative_bops_weight_only": 0.03, "group_sparsity": 0.5,
              "bits": {"weight": {"a": 3, "b": 4}, "input": {"a": 4}}}  # fmt: skip
    table = summary_table(report)
    assert "0.400%" in table and "3.50 / 4.00" in table and "3.9 KiB" in table and "99.00%" in table


def test_summary_table_shows_perplexity_of_language_models() -> None:
    side = {"accuracy": 0.5, "params": 10, "size_bytes": 40, "macs": 50}
    report = {"task": "lm", "dense": {**side, "perplexity": 3.25}, "compressed": {**side, "perplexity": 4.5},
              "relative_bops": 0.01, "relative_bops_weight_only": 0.1, "group_sparsity": 0.5}  # fmt: skip
    row = next(line for line in summary_table(report).splitlines() if line.startswith("perplexity"))
    assert row.split()[1:] == ["3.25", "4.50"]
