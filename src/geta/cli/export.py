"""``geta export CHECKPOINT --format onnx|packed --out PATH``: write a deployable file.

A thin wrapper over `geta.export.onnx` (QDQ graph, checked in onnxruntime) and
`geta.export.packed` (integer codes at their bit width + a JSON manifest).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from geta.cli.artifacts import add_checkpoint_argument, load_inputs, load_module, locate
from geta.cli.errors import CliError
from geta.cli.quiet import quiet_exporters
from geta.recipes import export_form

__all__ = ["add_parser", "run"]

FORMATS = ("onnx", "packed")


def add_parser(subparsers: Any) -> None:
    """Register ``geta export``."""
    p = subparsers.add_parser(
        "export",
        help="export a compressed model to ONNX (QDQ) or a packed low-bit file",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    add_checkpoint_argument(p)
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx or packed")
    p.add_argument("--out", required=True, metavar="PATH", help="file to write")
    p.add_argument("--input-shape", metavar="SHAPE", help="example input shape for ONNX, e.g. 1,3,32,32")
    p.add_argument("--input-dtype", default="float32", metavar="DTYPE", help="example input dtype [float32]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export CHECKPOINT and print what was written."""
    import geta.export

    files = locate(args.checkpoint)
    out = Path(args.out).expanduser()
    if out.is_dir():
        raise CliError(
            f"--out {out} is a directory; pass a file path such as {out / ('model.' + args.format)}"
        )
    if not out.parent.is_dir():
        raise CliError(f"--out {out}: the directory {out.parent} does not exist; create it first")
    model = load_module(files.model)
    if args.format == "onnx":
        module, inputs = export_form(model, load_inputs(files, args.input_shape, args.input_dtype))
        try:
            with quiet_exporters():
                info = geta.export.onnx(module, inputs, out)
        except ImportError as exc:
            raise CliError(
                f"ONNX export needs onnx, onnxruntime and onnxscript ({exc}): pip install 'torch-geta[onnx]'"
            ) from None
        print(
            f"wrote {out} (opset {info.opset}, {len(info.tensors)} quantized tensors, "
            f"max relative difference to torch {info.max_relative_diff:.2g})"
        )
    else:
        packed = geta.export.packed(model, out)
        fields = dataclasses.asdict(packed)
        print(f"wrote {out} ({fields['file_bytes']:,} bytes, {fields['packed_tensors']} bit-packed tensors)")
    return 0
