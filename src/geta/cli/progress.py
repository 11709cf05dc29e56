"""Console progress of ``geta compress``: one line for the whole run, with its ETA; the summary.

The run is measured in steps: every training batch of the dense phase and of the compression
phase, plus the finish (convert, evaluate, export, plot), which the bar counts as one epoch of
steps. The ETA is the time per step so far times the steps left, plus the finish: estimated
as `FINISH_PER_MEASUREMENT` times the convert + report that every compression epoch runs to
measure its BOPs (the finish converts, measures twice and traces the model again for ONNX;
measured on a 2-core CPU with the llama recipe: 65 s against 4-5 s a measurement), or one
epoch before any measurement. On a terminal one tqdm bar covers the run: what runs now
(``compress 3/30 [joint]``), the elapsed time and the ETA; each finished epoch leaves a line
above the bar. Off a terminal (a log file, CI) there is no bar: one line per epoch with the
run's elapsed time and ETA.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from geta.plan import Plan, QuantTarget
from geta.recipes import DataBundle, EpochStats, Metrics, Task

__all__ = [
    "FLOAT_BITS",
    "RunProgress",
    "TqdmReporter",
    "bits_text",
    "clock",
    "mean_bits",
    "metrics_text",
    "summary_table",
]

FLOAT_BITS = 32  # a mean bit width of 32 and more is float (a quantizer not yet bounded)
FINISH_PER_MEASUREMENT = 14  # the finish takes about this many per-epoch convert + report measurements
_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed{postfix}"


def clock(seconds: float) -> str:
    """``seconds`` as ``m:ss`` or ``h:mm:ss``."""
    s = max(0, round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def bits_text(bits: float, floats: float = 0) -> str:
    """A mean bit width for the console: ``3.87``, ``16.00 (+9 float)`` when ``floats``
    quantizers compute in float (left out of the mean), ``float`` at 32 bits and more."""
    if bits >= FLOAT_BITS - 1e-6:
        return "float"
    return f"{bits:.2f}" + (f" (+{int(floats)} float)" if floats else "")


class RunProgress:
    """Steps of a whole run (batches of both phases + the finish) and the ETA at the pace so far.

    >>> p = RunProgress(dense_epochs=2, compress_epochs=3, steps_per_epoch=10)
    >>> p.total, p.done
    (60, 0)
    >>> RunProgress(2, 3, 10, phase="compress", epoch=1, batch=4).done  # resumed mid-epoch
    34
    """

    def __init__(
        self,
        dense_epochs: int,
        compress_epochs: int,
        steps_per_epoch: int,
        *,
        phase: str = "dense",
        epoch: int = 0,
        batch: int = 0,
    ) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.finish_steps = steps_per_epoch  # the finish counts as one epoch
        self.total = (dense_epochs + compress_epochs) * steps_per_epoch + self.finish_steps
        before = dense_epochs if phase == "compress" else 0
        self.done = (before + epoch) * steps_per_epoch + batch
        self.started, self.done_at_start = time.perf_counter(), self.done
        self._measurements: list[float] = []

    def measured(self, seconds: float) -> None:
        """One convert + report of the model took ``seconds``: the finish will take a multiple."""
        self._measurements.append(seconds)

    def finish_seconds(self) -> float | None:
        """The finish's estimated duration: from the measurements, else one epoch at the pace so far."""
        if self._measurements:
            return FINISH_PER_MEASUREMENT * sum(self._measurements) / len(self._measurements)
        pace = self._pace()
        return None if pace is None else pace * self.finish_steps

    def _pace(self) -> float | None:
        steps = self.done - self.done_at_start
        return (time.perf_counter() - self.started) / steps if steps > 0 else None

    def eta(self) -> float | None:
        """Seconds left: the training steps left at this process's pace so far, plus the finish;
        None before the first step."""
        pace, finish = self._pace(), self.finish_seconds()
        if pace is None or finish is None:
            return None
        return pace * max(0, self.total - self.finish_steps - self.done) + finish

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class TqdmReporter:
    """Shows the run as one tqdm bar (stage, loss, accuracy, sparsity, mean bits, ETA).

    ``enabled=None`` shows the bar only on a terminal; otherwise one line per epoch is printed
    (unless ``quiet``), with the run's elapsed time and ETA once `run_start` was called.
    """

    def __init__(
        self, *, enabled: bool | None = None, quiet: bool = False, stream: TextIO | None = None
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.quiet = quiet
        self.progress: RunProgress | None = None
        self._bar: Any = None
        self._epochs = 0

    def run_start(self, progress: RunProgress) -> None:
        """The run's steps (called once the data, hence the batches per epoch, are known)."""
        self.progress = progress

    def _ensure_bar(self, batches: int, done: int, label: str) -> None:
        if self._bar is not None or not self.enabled or self.quiet:
            return
        from tqdm import tqdm

        total, initial = (
            (batches, done) if self.progress is None else (self.progress.total, self.progress.done)
        )
        self._bar = tqdm(
            total=total,
            initial=initial,
            file=self.stream,
            dynamic_ncols=True,
            bar_format=_BAR_FORMAT,
            leave=True,
        )  # fmt: skip (the ETA is RunProgress's)

    def epoch_start(self, phase: str, epoch: int, epochs: int, stage: str, batches: int, done: int) -> None:
        self._epochs = epochs
        label = f"{phase} {epoch + 1}/{epochs}" + (f" [{stage}]" if stage != phase else "")
        self._ensure_bar(batches, done, label)
        if self._bar is not None:
            self._bar.set_description_str(label, refresh=False)

    def batch(self, stats: EpochStats, extra: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.done += 1
        if self._bar is None:
            return
        post = {"loss": f"{stats.loss:.3f}", "acc": f"{stats.accuracy:.3f}"}
        if "sparsity" in extra:
            post["sparsity"] = f"{extra['sparsity']:.2f}"
        if "weight_bits" in extra:
            post["w_bits"] = bits_text(extra["weight_bits"], extra.get("weight_float", 0))
        if "input_bits" in extra:
            post["a_bits"] = bits_text(extra["input_bits"], extra.get("input_float", 0))
        self._bar.set_postfix({"ETA": self._eta_text(), **post}, refresh=False)
        self._bar.update(1)

    def epoch_end(self, record: dict[str, Any]) -> None:
        if self.quiet:
            return
        of = f"/{self._epochs}" if self._epochs else ""
        line = f"{record['phase']} epoch {record['epoch'] + 1}{of} [{record['stage']}]: {_epoch_text(record)}"
        if self._bar is None and self.progress is not None:
            line += f" | run {clock(self.progress.elapsed())} elapsed, ETA {self._eta_text()}"
        self._write(line)

    def _eta_text(self) -> str:
        eta = self.progress.eta() if self.progress is not None else None
        return "?" if eta is None else clock(eta)

    def finishing(self) -> None:
        """The finish begins: converting, evaluating, exporting (no batches to count)."""
        finish = self.progress.finish_seconds() if self.progress is not None else None
        about = f" (about {clock(finish)})" if finish is not None else ""
        if self._bar is not None:
            self._bar.set_description_str("converting, evaluating, exporting", refresh=False)
            self._bar.set_postfix_str(f"ETA {clock(finish)}" if finish is not None else "", refresh=True)
        elif not self.quiet:
            print(f"converting, evaluating and exporting{about} ...", file=self.stream, flush=True)

    def finished(self) -> None:
        """The run is done: the bar reaches 100 % and stays as the last progress line."""
        if self._bar is not None:
            self._bar.set_description_str("done", refresh=False)
            self._bar.set_postfix_str("", refresh=False)
            self._bar.update(self._bar.total - self._bar.n)
        elif self.progress is not None and not self.quiet:
            print(f"done in {clock(self.progress.elapsed())}", file=self.stream, flush=True)
        self.close()

    def note(self, text: str) -> None:
        """A line above the bar."""
        if not self.quiet:
            self._write(text)

    def warning(self, text: str) -> None:
        """A warning line, shown even with ``quiet``."""
        self._write(f"geta compress: warning: {text}")

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _epoch_text(record: dict[str, Any]) -> str:
    text = f"loss {record['loss']:.3f}, test acc {record['test_accuracy']:.4f}"
    if "test_perplexity" in record:
        text += f", test ppl {record['test_perplexity']:.2f}"
    if "sparsity" in record:
        text += f", sparsity {record['sparsity']:.2f}"
    if "weight_bits" in record:
        text += f", w bits {bits_text(record['weight_bits'], record.get('weight_float', 0))}"
    if "input_bits" in record:
        text += f", a bits {bits_text(record['input_bits'], record.get('input_float', 0))}"
    return text


def _size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:,.1f} {unit}" if unit != "B" else f"{n_bytes:,.0f} B"
        n_bytes /= 1024
    return ""


def summary_table(report: dict[str, Any]) -> str:
    """The final table of a ``report.json`` dict: dense vs compressed, side by side."""
    d, c = report["dense"], report["compressed"]
    metric = "accuracy" if report.get("task", "classify") == "classify" else "token accuracy"
    rows = [
        ("", "dense", "compressed"),
        (metric, f"{d['accuracy']:.2%}", f"{c['accuracy']:.2%}"),
        *([("perplexity", f"{d['perplexity']:.2f}", f"{c['perplexity']:.2f}")] if "perplexity" in c else []),
        ("parameters", f"{d['params']:,}", f"{c['params']:,}"),
        ("size", _size(d["size_bytes"]), _size(c["size_bytes"])),
        ("MACs", f"{d['macs']:,}", f"{c['macs']:,}"),
        ("BOPs (W+A)", "100%", f"{report['relative_bops']:.3%}"),
        ("BOPs (W only)", "100%", f"{report['relative_bops_weight_only']:.3%}"),
        ("group sparsity", "0.00", f"{report['group_sparsity']:.2f}"),
        ("mean bits (W / A)", "32 / 32", f"{_mean_bits(report, 'weight')} / {_mean_bits(report, 'input')}"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines += _caveats(report)
    return "\n".join(lines)


def _caveats(report: dict[str, Any]) -> list[str]:
    """What the numbers above rest on: layers left in float, ops not counted (``report.json``'s
    ``headline``, or its ``float_layers`` / ``unknown_ops`` in an older report)."""
    if "headline" in report:
        return [f"note: {line}" for line in report["headline"]]
    lines = []
    if report.get("float_layers"):
        lines.append(f"note: left in float, counted at 32 bits: {', '.join(report['float_layers'])}")
    if report.get("unknown_ops"):
        lines.append(f"note: NOT counted in MACs or BOPs: {', '.join(report['unknown_ops'])}")
    return lines


def _mean_bits(report: dict[str, Any], kind: str) -> str:
    bits = report.get("bits", {}).get(kind, {})
    return f"{sum(bits.values()) / len(bits):.2f}" if bits else "32"


def metrics_text(data: DataBundle, metrics: Metrics) -> str:
    """``test accuracy 97.2%`` (classification) or ``token accuracy 41.0%, perplexity 7.31`` (LM)."""
    if data.task is Task.LM:
        return f"test token accuracy {metrics.accuracy:.2%}, perplexity {metrics.perplexity:.2f}"
    return f"test accuracy {metrics.accuracy:.2%}"


def mean_bits(plan: Plan) -> dict[str, float]:
    """``weight_bits`` / ``input_bits``: mean real-valued bit width of the plan's quantizers per target.

    A quantizer above 32 bits (free to grow in the warm-up) computes in float: it is left out
    of the mean and counted in ``weight_float`` / ``input_float`` instead (the mean is 32 when
    every one is float).
    """
    out: dict[str, float] = {}
    for target in QuantTarget:
        bits = [b.quantizer.bit_width for b in plan.bindings if b.target is target]
        if bits:
            bounded = [b for b in bits if b < FLOAT_BITS]
            out[f"{target.value}_bits"] = sum(bounded) / len(bounded) if bounded else FLOAT_BITS
            if len(bounded) < len(bits):
                out[f"{target.value}_float"] = len(bits) - len(bounded)
    return out
