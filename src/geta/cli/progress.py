"""Console progress of ``geta compress``: a tqdm bar per epoch and the final summary table."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from geta.recipes import EpochStats

__all__ = ["TqdmReporter", "summary_table"]


class TqdmReporter:
    """Shows each epoch as a tqdm bar: stage, loss, accuracy, group sparsity and mean bits.

    ``enabled=None`` shows bars only on a terminal; a one-line note per epoch is printed
    otherwise (unless ``quiet``).
    """

    def __init__(
        self, *, enabled: bool | None = None, quiet: bool = False, stream: TextIO | None = None
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.quiet = quiet
        self._bar: Any = None

    def epoch_start(self, phase: str, epoch: int, epochs: int, stage: str, batches: int, done: int) -> None:
        self.close()
        if not self.enabled or self.quiet:
            return
        from tqdm import tqdm

        label = f"{phase} {epoch + 1}/{epochs}" + (f" [{stage}]" if stage != phase else "")
        self._bar = tqdm(
            total=batches,
            initial=done,
            desc=label,
            file=self.stream,
            leave=True,
            dynamic_ncols=True,
            unit="batch",
        )

    def batch(self, stats: EpochStats, extra: dict[str, float]) -> None:
        if self._bar is None:
            return
        post = {"loss": f"{stats.loss:.3f}", "acc": f"{stats.accuracy:.3f}"}
        if "sparsity" in extra:
            post["sparsity"] = f"{extra['sparsity']:.2f}"
        if "weight_bits" in extra:
            post["w_bits"] = f"{extra['weight_bits']:.1f}"
        if "input_bits" in extra:
            post["a_bits"] = f"{extra['input_bits']:.1f}"
        self._bar.set_postfix(post, refresh=False)
        self._bar.update(1)

    def epoch_end(self, record: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(_epoch_text(record), refresh=True)
            self.close()
        elif not self.quiet:
            print(
                f"{record['phase']} epoch {record['epoch'] + 1} [{record['stage']}]: {_epoch_text(record)}",
                file=self.stream,
                flush=True,
            )

    def note(self, text: str) -> None:
        """A line between bars (never inside one)."""
        self.close()
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def warning(self, text: str) -> None:
        """A warning line, shown even with ``quiet``."""
        self.close()
        print(f"geta compress: warning: {text}", file=self.stream, flush=True)

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
        text += f", w bits {record['weight_bits']:.2f}"
    if "input_bits" in record:
        text += f", a bits {record['input_bits']:.2f}"
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
    return "\n".join(lines)


def _mean_bits(report: dict[str, Any], kind: str) -> str:
    bits = report.get("bits", {}).get(kind, {})
    return f"{sum(bits.values()) / len(bits):.2f}" if bits else "32"
