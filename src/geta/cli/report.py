"""``geta report CHECKPOINT``: MACs, bit widths, BOPs and sizes of a compressed model.

A thin wrapper over `geta.report`. CHECKPOINT is the ``--out`` directory of ``geta compress``
(its dense model is rebuilt from ``config.yaml`` + ``dense.pt`` as the reference of the relative
numbers) or a ``torch.save``'d module (``--dense`` names a dense module file to compare with).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from torch import nn

from geta.cli.artifacts import RunFiles, add_checkpoint_argument, load_inputs, load_module, locate
from geta.cli.errors import CliError
from geta.cli.quiet import quiet_capture

__all__ = ["add_parser", "run", "dense_of_run"]


def add_parser(subparsers: Any) -> None:
    """Register ``geta report``."""
    p = subparsers.add_parser(
        "report",
        help="measure MACs, bits, BOPs and size of a compressed model",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    add_checkpoint_argument(p)
    p.add_argument(
        "--dense", metavar="FILE", help="a torch.save'd dense module: reference of relative numbers"
    )
    p.add_argument(
        "--input-shape", metavar="SHAPE", help="example input shape, e.g. 1,3,32,32 (else inputs.pt)"
    )
    p.add_argument("--input-dtype", default="float32", metavar="DTYPE", help="example input dtype [float32]")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of markdown")
    p.set_defaults(func=run)


def dense_of_run(run_dir: Path) -> nn.Module | None:
    """The dense model of a ``geta compress`` run (recipe rebuilt + dense.pt), or None if unknown."""
    import torch
    import yaml

    from geta.cli.options import CompressOptions
    from geta.recipes import build_model, load_run_data

    config, weights = run_dir / "config.yaml", run_dir / "dense.pt"
    if not (config.is_file() and weights.is_file()):
        return None
    try:
        raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        opts = CompressOptions.from_mapping(raw, where=lambda k: f"{k!r} in {config}")
        data = load_run_data(opts.model, opts.data, seed=opts.seed, seq_len=opts.seq_len)
        model = build_model(opts.model, data, seed=opts.seed)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise CliError(
            f"the dense model of {run_dir} could not be rebuilt ({type(exc).__name__}: {exc}); "
            "pass --dense FILE or report without a dense reference by passing the .pt file"
        ) from None
    return model.eval()


def _dense(args: argparse.Namespace, files: RunFiles) -> nn.Module | None:
    if args.dense:
        return load_module(Path(args.dense).expanduser())
    return dense_of_run(files.run_dir) if files.run_dir is not None else None


def _run_record(files: RunFiles) -> dict[str, Any] | None:
    """The report.json of the run CHECKPOINT comes from (accuracies, the dense side), if any."""
    path = files.run_dir / "report.json" if files.run_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"dense", "compressed"} <= set(record) else None


def run(args: argparse.Namespace) -> int:
    """Print the report of CHECKPOINT (markdown, or JSON with ``--json``).

    For a run directory, the run's evaluation (accuracy, perplexity for language models) and
    its dense-vs-compressed table come first, from its report.json.
    """
    import geta
    from geta.cli.progress import summary_table
    from geta.reporting.model import DENSE_COUNTS_ATTR

    files = locate(args.checkpoint)
    model = load_module(files.model)
    inputs = load_inputs(files, args.input_shape, args.input_dtype)
    dense = _dense(args, files)
    try:
        with quiet_capture():
            rep = geta.report(model, inputs, dense=dense)
    except geta.CaptureError as exc:
        raise CliError(f"{files.model} could not be measured on its example inputs: {exc}") from None
    record = _run_record(files)
    if args.json:
        out = rep.to_dict()
        if record is not None:
            out["run"] = {
                key: record[key] for key in ("task", "data", "dense", "compressed") if key in record
            }
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0
    if record is not None:
        print(
            f"run {files.run_dir}: {record.get('options', {}).get('model', '?')} on {record.get('data', '?')}"
        )
        print(summary_table(record))
        print()
    if dense is None and getattr(model, DENSE_COUNTS_ATTR, None) is None:
        print("(no dense reference: relative numbers are against this model at FP32; pass --dense)")
    print(rep.to_markdown())
    return 0
