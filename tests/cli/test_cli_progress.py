"""The console progress: one bar (or a log line per epoch) for the whole run, the summary table."""

from __future__ import annotations

import io

import pytest

from geta.cli.progress import (
    FINISH_PER_MEASUREMENT,
    RunProgress,
    TqdmReporter,
    bits_text,
    clock,
    summary_table,
)
from geta.recipes import EpochStats


def _epoch(reporter: TqdmReporter, phase: str, epoch: int, epochs: int, stage: str, batches: int) -> None:
    reporter.epoch_start(phase, epoch, epochs, stage, batches=batches, done=0)
    for i in range(batches):
        reporter.batch(EpochStats(loss_sum=float(i + 1), hits=i + 1, count=i + 1, batches=i + 1), {})
    reporter.epoch_end({"phase": phase, "epoch": epoch, "stage": stage, "loss": 0.75, "test_accuracy": 0.9})


def test_one_bar_for_the_whole_run_with_its_eta() -> None:
    stream = io.StringIO()
    reporter = TqdmReporter(enabled=True, stream=stream)
    reporter.run_start(RunProgress(dense_epochs=1, compress_epochs=2, steps_per_epoch=3))
    _epoch(reporter, "dense", 0, 1, "dense", 3)
    reporter.epoch_start("compress", 0, 2, "joint", batches=3, done=0)
    stats = EpochStats(loss_sum=1.5, hits=90, count=100, batches=2)
    reporter.batch(stats, {"sparsity": 0.25, "weight_bits": 3.5, "input_bits": 40.0})
    line = str(reporter._bar)  # the bar as drawn now (tqdm throttles what it writes to the stream)
    assert "compress 1/2 [joint]" in line and "sparsity=0.25" in line and "w_bits=3.50" in line
    assert "a_bits=float" in line  # a warm-up quantizer above 32 bits is float, not "40.0 bits"
    # one bar for the run: 4 of its 12 steps (3 batches x 3 epochs + the finish), not 2/3 of an epoch
    assert "33%" in line and "ETA" in line and "elapsed" in line
    assert "dense epoch 1/1 [dense]: loss 0.750" in stream.getvalue()  # a finished epoch: a line above
    reporter.finishing()
    reporter.finished()
    assert "100%" in stream.getvalue() and "done" in stream.getvalue()


def test_off_a_terminal_one_log_line_per_epoch_with_the_eta() -> None:
    stream = io.StringIO()  # a StringIO is not a terminal
    reporter = TqdmReporter(stream=stream)
    reporter.run_start(RunProgress(dense_epochs=2, compress_epochs=1, steps_per_epoch=4))
    _epoch(reporter, "dense", 0, 2, "dense", 4)
    _epoch(reporter, "dense", 1, 2, "dense", 4)
    reporter.finishing()
    reporter.finished()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()  # no bar redraws in a log file
    assert lines[0].startswith("dense epoch 1/2 [dense]: loss 0.750, test acc 0.9000 | run ")
    assert lines[1].startswith("dense epoch 2/2 [dense]:") and all("ETA " in line for line in lines[:2])
    assert len(lines) == 4 and lines[2].startswith("converting, evaluating and exporting (about ")
    assert lines[3].startswith("done in ")


def test_quiet_prints_nothing_but_warnings() -> None:
    stream = io.StringIO()
    reporter = TqdmReporter(quiet=True, stream=stream)
    reporter.run_start(RunProgress(1, 1, 2))
    _epoch(reporter, "dense", 0, 1, "dense", 2)
    reporter.note("a note")
    reporter.finishing()
    reporter.finished()
    assert stream.getvalue() == ""
    reporter.warning("w")
    assert stream.getvalue() == "geta compress: warning: w\n"


def test_run_progress_counts_a_resumed_run_from_where_it_stopped() -> None:
    p = RunProgress(3, 4, 10, phase="compress", epoch=2, batch=5)
    assert (p.total, p.done) == (80, 55) and p.eta() is None  # no step of this process yet
    p.done += 5
    eta = p.eta()
    assert eta is not None and eta >= 0
    assert clock(59.6) == "1:00" and clock(3725) == "1:02:05"


def test_eta_includes_the_finish_estimated_from_the_per_epoch_measurements() -> None:
    p = RunProgress(0, 2, 10)
    p.started -= 10.0  # 10 s for ...
    p.done = 5  # ... 5 steps: 2 s a step, 15 training steps left
    assert p.finish_seconds() == pytest.approx(20.0, rel=0.01)  # no measurement yet: one epoch
    assert p.eta() == pytest.approx(30.0 + 20.0, rel=0.01)
    p.measured(1.0)
    p.measured(3.0)  # convert + report take 2 s: the finish about FINISH_PER_MEASUREMENT times that
    assert p.finish_seconds() == pytest.approx(2.0 * FINISH_PER_MEASUREMENT)
    assert p.eta() == pytest.approx(30.0 + 2.0 * FINISH_PER_MEASUREMENT, rel=0.01)


def test_mean_bits_are_float_above_32() -> None:
    assert bits_text(3.874) == "3.87" and bits_text(32.0) == "float" and bits_text(52.97) == "float"
    assert bits_text(16.0, 9) == "16.00 (+9 float)"


def test_mean_bits_leave_float_quantizers_out_of_the_mean() -> None:
    import warnings

    import geta
    from geta.cli.progress import mean_bits
    from geta.testing import zoo

    model, x = zoo.build("mlp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = geta.prepare(model, x, geta.Config(weight_bits=(4, 8), act_bits=(4, 8)))
    weights = [b.quantizer for b in plan.bindings if b.target.value == "weight"]
    for q in weights[1:]:
        q.set_bits(41.0)  # grown in the warm-up: finer than float32, so float
    weights[0].set_bits(16.0)
    bits = mean_bits(plan)
    assert bits["weight_bits"] == pytest.approx(16.0) and bits["weight_float"] == len(weights) - 1
    weights[0].set_bits(40.0)
    assert mean_bits(plan)["weight_bits"] == 32 and mean_bits(plan)["weight_float"] == len(weights)


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


def test_summary_names_layers_left_in_float_and_ops_not_counted() -> None:
    side = {"accuracy": 0.5, "params": 10, "size_bytes": 40, "macs": 50}
    note = "left in float, counted at 32 bits: lstm (lstm, ...)"
    report = {"dense": side, "compressed": side, "relative_bops": 0.3, "relative_bops_weight_only": 0.4,
              "group_sparsity": 0.5, "headline": [note]}  # fmt: skip
    assert summary_table(report).splitlines()[-1] == f"note: {note}"
    del report["headline"]
    report |= {"float_layers": ["rnn"], "unknown_ops": ["aten.foo (m)"]}  # a report.json of geta 0.1
    lines = summary_table(report).splitlines()
    assert "rnn" in lines[-2] and "NOT counted" in lines[-1] and "aten.foo (m)" in lines[-1]
