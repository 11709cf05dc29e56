"""``geta compress``: train a dense baseline, compress it with QASSO, convert, report, export.

A thin wrapper: options (`geta.cli.options`) -> `CompressJob` (dense + QASSO epochs, resumable)
-> `write_results` (report, exports, plots in a staging folder) -> `publish` (atomic swap).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from geta.cli.checkpoint import load_state, state_path
from geta.cli.errors import EXIT_INTERRUPTED, CliError
from geta.cli.job import CompressJob, Interrupted, JobResult, RunState
from geta.cli.options import CompressOptions, load_config_file
from geta.cli.outputs import check_out_dir, publish, write_results
from geta.cli.progress import TqdmReporter, summary_table
from geta.errors import GetaError
from geta.recipes import DATA_SETS, RECIPES

__all__ = ["add_parser", "run", "options_from_args", "StopFlag"]

_HELP = {
    "model": f"model recipe ({', '.join(RECIPES)}) or module:factory [resnet]",
    "data": f"data set: {', '.join(DATA_SETS)} [digits]",
    "sparsity": "fraction of prunable channels/heads to remove [0.6]",
    "weight_bits": "final bit range of the weights, LO,HI [3,4]",
    "act_bits": "final bit range of layer inputs, LO,HI or none [2,4]",
    "epochs": "compression epochs in total, split over the four stages [30]",
    "warmup": "warm-up epochs [1]",
    "projection": "projection epochs [2]",
    "joint": "joint (pruning) epochs [5]",
    "cooldown": "cool-down epochs [12]",
    "dense_epochs": "epochs of dense baseline training [40]",
    "dense_lr": "dense training learning rate [0.1 sgd, 1e-3 adam]",
    "optimizer": "sgd, adam or adamw [sgd]",
    "lr": "QASSO learning rate [0.05 sgd, 1e-3 adam]",
    "lr_quant": "learning rate of quantizer scalars [1e-3]",
    "momentum": "SGD momentum [0.9]",
    "weight_decay": "weight decay [1e-4]",
    "grad_clip": "element-wise gradient clip inside QASSO [none]",
    "batch_size": "batch size [64]",
    "device": "torch device [cpu]",
    "seed": "seed of the data split, init and shuffling [0]",
    "dense_checkpoint": "state_dict of the dense model (e.g. dense.pt of a run): skip dense training",
}


def add_parser(subparsers: Any) -> None:
    """Register ``geta compress``."""
    p = subparsers.add_parser(
        "compress", help="train and compress a model (prune + quantize), then report and export",
        description="Train a dense baseline (or load one), compress it with QASSO (structured pruning + "
                    "mixed-precision quantization), convert, evaluate and write report, plots and exports "
                    "into --out. Ctrl-C leaves a checkpoint; --resume continues it.")  # fmt: skip
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (created; replaced at the end)"
    )
    p.add_argument("--config", metavar="FILE", help="YAML or TOML file with the options below")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-export", action="store_true", help="skip model.onnx and model.geta")
    p.add_argument(
        "--stop-after-epochs", type=int, default=None, help=argparse.SUPPRESS
    )  # tests: simulate ^C
    for f in fields(CompressOptions):
        flag = "--" + f.name.replace("_", "-")
        p.add_argument(
            flag,
            dest=f.name,
            default=argparse.SUPPRESS,
            metavar=f.name.split("_")[-1].upper(),
            help=_HELP.get(f.name),
        )
    p.set_defaults(func=run)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in fields(CompressOptions) if hasattr(args, f.name)}


def options_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> CompressOptions:
    """Options from ``base`` (a checkpoint's), then the config file, then the flags."""
    given = _given(args)
    from_file = {}
    if getattr(args, "config", None):
        from_file = {str(k).replace("-", "_"): v for k, v in load_config_file(args.config).items()}
    merged = {**(base or {}), **from_file, **given}

    def where(key: str) -> str:
        if key in given:
            return "--" + key.replace("_", "-")
        return f"{key!r} in {args.config}" if key in from_file else f"{key!r} of the checkpoint"

    return CompressOptions.from_mapping(merged, where=where)


def _resume_state(args: argparse.Namespace, out: Path) -> RunState:
    path = state_path(out)
    state = RunState.from_checkpoint(load_state(path), path)
    asked = options_from_args(args, base=state.options.to_dict())
    if asked != state.options:
        old, new = state.options.to_dict(), asked.to_dict()
        diff = ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in old if old[k] != new[k])
        raise CliError(
            f"--resume continues the run in {out} with its own options, but these differ: {diff}; "
            "drop them, or start a new run with another --out"
        )
    return state


class StopFlag:
    """Set by the first Ctrl-C (the job stops at the next batch boundary); a second one aborts."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: object) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def run(args: argparse.Namespace) -> int:
    """Run ``geta compress``; 0 on success, 130 when stopped (resumable), 2 on bad input."""
    start = time.perf_counter()
    out = Path(args.out).expanduser()
    check_out_dir(out)
    state = _resume_state(args, out) if args.resume else RunState(options_from_args(args))
    reporter = TqdmReporter(quiet=args.quiet)
    stop = StopFlag()
    job = CompressJob(out, reporter, stop=stop, stop_after_epochs=args.stop_after_epochs)
    resume_hint = f"resume with: geta compress --out {out} --resume"
    try:
        with stop.installed():
            result = job.run(state)
        reporter.note("converting, evaluating and exporting ...")
        report = _finish(result, out, args, start)
    except Interrupted as exc:
        reporter.close()
        print(f"geta compress: stopped at {exc.where}; checkpoint saved; {resume_hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        reporter.close()
        print(f"geta compress: interrupted; the last finished epoch is saved; {resume_hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        reporter.close()
        if state_path(out).is_file() and not isinstance(exc, GetaError):
            print(f"geta compress: failed; the last finished epoch is saved; {resume_hint}", file=sys.stderr)
        raise
    _print_summary(report, out, quiet=args.quiet)
    return 0


def _finish(result: JobResult, out: Path, args: argparse.Namespace, start: float) -> dict[str, Any]:
    """Write the results into a staging folder and swap it into place as ``out``."""
    staging = out.parent / f".{out.name}.staging-{os.getpid()}"
    try:
        report = write_results(
            result, staging, plots=not args.no_plots, export=not args.no_export,
            wall_seconds=time.perf_counter() - start,
        )  # fmt: skip
        publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _print_summary(report: dict[str, Any], out: Path, *, quiet: bool) -> None:
    if quiet:
        return
    print(summary_table(report))
    for name, info in report["exports"].items():
        if "error" in info:
            print(f"warning: {name} export failed: {info['error']}", file=sys.stderr)
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    print(f"wrote {out}/: {', '.join(files)}")
