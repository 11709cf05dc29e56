"""``geta compress``: train a dense baseline, compress it with QASSO, convert, report, export.

A thin wrapper: options (`geta.cli.options`) -> `CompressJob` (dense + QASSO epochs, resumable)
-> `write_results` (report, exports, plots in a staging folder) -> `publish` (atomic swap).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from geta.cli.checkpoint import load_state, state_path
from geta.cli.errors import EXIT_INTERRUPTED, CliError
from geta.cli.job import CompressJob, Interrupted, JobResult, RunState
from geta.cli.options import CompressOptions, default_text, option_spec
from geta.cli.outputs import (
    RunStatus,
    check_out_dir,
    check_out_path,
    publish,
    recover_publish,
    run_status,
    write_results,
)
from geta.cli.progress import TqdmReporter, summary_table
from geta.cli.runlock import RunLock
from geta.cli.values import load_config_file
from geta.errors import GetaError

__all__ = ["add_parser", "run", "options_from_args", "option_help", "StopFlag"]


def option_help(name: str) -> str:
    """``--help`` text of a compress option: its description, then its default from the code."""
    spec = option_spec(name)
    text = spec.help + (f" ({spec.choices()})" if spec.choices is not None else "")
    default = default_text(name)
    return text if default is None else f"{text} [{default}]"


def add_parser(subparsers: Any) -> None:
    """Register ``geta compress``."""
    p = subparsers.add_parser(
        "compress", help="train and compress a model (prune + quantize), then report and export",
        description="Train a dense baseline (or load one), compress it with QASSO (structured pruning + "
                    "mixed-precision quantization), convert, evaluate and write report, plots and exports "
                    "into --out. Ctrl-C leaves a checkpoint; --resume continues it.")  # fmt: skip
    p.add_argument(
        "--out", required=True, metavar="DIR",
        help="output directory (created; a run already there needs --resume or --overwrite)",
    )  # fmt: skip
    p.add_argument("--config", metavar="FILE", help="YAML or TOML file with the options below")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    again.add_argument(
        "--overwrite", action="store_true", help="start over, replacing the run (finished or not) in --out"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--no-export", action="store_true", help="skip model.onnx and hf/ (model.geta is always written)"
    )
    p.add_argument(
        "--trust-run-code", action="store_true",
        help="--resume: import the module:factory the checkpoint names without --model given again",
    )  # fmt: skip
    p.add_argument(
        "--stop-after-epochs", type=int, default=None, help=argparse.SUPPRESS
    )  # tests: simulate ^C
    for f in fields(CompressOptions):  # every option as its field declares it (`Option`)
        flag, spec = "--" + f.name.replace("_", "-"), option_spec(f.name)
        if isinstance(f.default, bool):  # a switch: --NAME turns it on, --no-NAME off when on by
            flag = "--no-" + flag[2:] if f.default else flag  # default (a config file may say either)
            p.add_argument(flag, dest=f.name, action="store_const", const=not f.default,
                           default=argparse.SUPPRESS, help=option_help(f.name))  # fmt: skip
            continue
        p.add_argument(
            flag,
            dest=f.name,
            default=argparse.SUPPRESS,
            metavar=spec.metavar or f.name.split("_")[-1].upper(),
            help=option_help(f.name),
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
    _check_resumed_code(args, state.options.model, path)
    _refuse_changes(args, out, state.options)
    return state


def _check_resumed_code(args: argparse.Namespace, spec: str, path: Path) -> None:
    """A checkpoint that names a user's module:factory runs it only if the user names it too."""
    from geta.cli.artifacts import check_model_code

    named = getattr(args, "model", None)
    if named is None and getattr(args, "config", None):
        named = load_config_file(args.config).get("model")
    trust = bool(getattr(args, "trust_run_code", False))
    where = f"checkpoint {path}"
    check_model_code(spec, None if named is None else str(named), trust, where, path.parent.parent)


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
    """Run ``geta compress``; 0 on success, 130 when stopped (resumable), 2 on bad input.

    The whole run holds the lock of ``--out`` (`RunLock`): a second run on it is refused at once.
    """
    start = time.perf_counter()
    out = Path(args.out).expanduser()
    check_out_path(out)  # before anything else: a bad --out is found in a second, not after training
    with RunLock(out):
        note = recover_publish(out)
        if note and not args.quiet:
            print(f"geta compress: {note}", file=sys.stderr)
        return _run_locked(args, out, start)


def _run_locked(args: argparse.Namespace, out: Path, start: float) -> int:
    status = run_status(out, locked=True)
    check_out_dir(out, status, resume=args.resume, overwrite=args.overwrite)
    if args.resume and status is RunStatus.FINISHED:
        _check_finished(args, out)
        print(f"geta compress: the run in {out} is already complete ({out / 'report.json'}); "
              "nothing to resume (pass --overwrite to run it again)", file=sys.stderr)  # fmt: skip
        return 0
    state = _resume_state(args, out) if args.resume else RunState(options_from_args(args))
    reporter = TqdmReporter(quiet=args.quiet)
    stop = StopFlag()
    job = CompressJob(out, reporter, stop=stop, stop_after_epochs=args.stop_after_epochs, started=start)
    resume_hint = f"resume with: geta compress --out {out} --resume"
    try:
        with stop.installed():
            result = job.run(state)
        reporter.finishing()
        report = _finish(result, out, args, job.wall_seconds)
        reporter.finished()
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


def _check_finished(args: argparse.Namespace, out: Path) -> None:
    """``--resume`` on a finished run: its report.json must be sound and the options given its own."""
    path = out / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        stored = report["options"]
        if not isinstance(stored, dict):
            raise TypeError("'options' is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CliError(
            f"--resume: {path} is not a geta report ({type(exc).__name__}: {exc}) and no checkpoint is "
            f"left to resume; pass --overwrite to run again, or restore the file"
        ) from None
    options = CompressOptions.from_mapping(stored, where=lambda k: f"option {k!r} in {path}")
    _refuse_changes(args, out, options)


def _shown(value: object) -> str:
    """An option's value as a flag would say it (None is ``none``)."""
    return "none" if value is None else repr(value)


def _refuse_changes(args: argparse.Namespace, out: Path, stored: CompressOptions) -> None:
    """A flag or config value given with ``--resume`` must equal what the run stored."""
    asked = options_from_args(args, base=stored.to_dict())
    if asked != stored:
        old, new = stored.to_dict(), asked.to_dict()
        changed = [k for k in old if old[k] != new[k]]
        diff = ", ".join(f"--{k.replace('_', '-')} {_shown(old[k])} -> {_shown(new[k])}" for k in changed)
        raise CliError(
            f"--resume continues the run in {out} with its own options, but these differ: {diff}; "
            "drop them, or start a new run with another --out"
        )


def _finish(
    result: JobResult, out: Path, args: argparse.Namespace, wall_clock: Callable[[], float]
) -> dict[str, Any]:
    """Write the results into a staging folder and swap it into place as ``out``.

    A failure while writing deletes the staging folder (the checkpoint in ``out`` resumes); once
    it is complete, a failure inside `publish` leaves it for `recover_publish` to move in.
    """
    staging = out.parent / f".{out.name}.staging-{os.getpid()}"
    try:
        report = write_results(
            result, staging, plots=not args.no_plots, export=not args.no_export,
            wall_clock=wall_clock,
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish(staging, out)
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
