"""``geta report CHECKPOINT``: MACs, bit widths, BOPs and sizes of a compressed model.

A thin wrapper over `geta.report`. CHECKPOINT is the ``--out`` directory of ``geta compress``:
its compressed model is rebuilt from ``config.yaml`` + ``model.geta`` and its dense model, the
reference of the relative numbers, from ``config.yaml`` + ``dense.pt`` (`geta.cli.rebuild`;
nothing in the folder runs code). A ``torch.save``'d module file is read only with
``--trust-run-code``. ``--dense`` names a dense state_dict (or, trusted, a module) to compare with.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from geta.cli.artifacts import (
    RunFiles,
    add_checkpoint_argument,
    load_inputs,
    load_module,
    locate,
    verify_run_file,
)
from geta.cli.errors import CliError
from geta.cli.quiet import quiet_capture
from geta.cli.rebuild import load_dense_file, load_run

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Register ``geta report``."""
    p = subparsers.add_parser(
        "report",
        help="measure MACs, bits, BOPs and size of a compressed model",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    add_checkpoint_argument(p)
    p.add_argument(
        "--dense",
        metavar="FILE",
        help="dense reference: a state_dict of the run's model (or a trusted module)",
    )
    p.add_argument(
        "--input-shape", metavar="SHAPE", help="example input shape, e.g. 1,3,32,32 (else inputs.pt)"
    )
    p.add_argument("--input-dtype", default="float32", metavar="DTYPE", help="example input dtype [float32]")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of markdown")
    p.set_defaults(func=run)


def _run_record(files: RunFiles) -> dict[str, Any] | None:
    """The report.json of the run CHECKPOINT comes from (accuracies, the dense side), if any."""
    path = files.run_dir / "report.json" if files.run_dir is not None else None
    if path is None or not path.is_file():
        return None
    assert files.run_dir is not None
    verify_run_file(files.run_dir, "report.json")
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
    loaded = load_run(files, args) if files.run_dir is not None else None
    model = loaded.model if loaded is not None else load_module(files.model, trust=args.trust_run_code)
    inputs = load_inputs(files, args.input_shape, args.input_dtype)
    if args.dense:
        dense = load_dense_file(Path(args.dense).expanduser(), loaded, trust=args.trust_run_code)
    else:
        dense = loaded.dense() if loaded is not None else None
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
    print(rep.to_markdown(widths=_widths(dense, model)))
    return 0


def _widths(dense: Any, model: Any) -> dict[str, str] | None:
    """Each layer's kept width for the table, when the dense model itself is at hand."""
    from torch import nn

    from geta.cli.widths import kept_fractions, width_text

    if not (isinstance(dense, nn.Module) and isinstance(model, nn.Module)):
        return None
    return {name: width_text(kept) for name, kept in kept_fractions(dense, model).items()}
