"""``geta export CHECKPOINT --format onnx|packed|hf --out PATH``: write a deployable file or folder.

A thin wrapper over `geta.export.onnx` (QDQ graph, checked in onnxruntime),
`geta.export.packed` (integer codes at their bit width + a JSON manifest) and, for a
Hugging Face model, `geta.cli.hfout.write_hf` (a folder plain transformers loads: integer
weights, tokenizer, model card; the same as a run's ``hf/``).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from geta.cli.artifacts import RunFiles, add_checkpoint_argument, load_inputs, load_module, locate
from geta.cli.errors import CliError
from geta.cli.hfout import write_hf
from geta.cli.quiet import quiet_exporters
from geta.cli.rebuild import load_run
from geta.recipes import export_form

__all__ = ["add_parser", "run"]

FORMATS = ("onnx", "packed", "hf")


def add_parser(subparsers: Any) -> None:
    """Register ``geta export``."""
    p = subparsers.add_parser(
        "export",
        help="export a compressed model to ONNX (QDQ), a packed low-bit file or a Hugging Face folder",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    add_checkpoint_argument(p)
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx, packed or hf (a folder)")
    p.add_argument("--out", required=True, metavar="PATH", help="file to write (hf: a new or empty folder)")
    p.add_argument("--input-shape", metavar="SHAPE", help="example input shape for ONNX, e.g. 1,3,32,32")
    p.add_argument("--input-dtype", default="float32", metavar="DTYPE", help="example input dtype [float32]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export CHECKPOINT and print what was written."""
    import geta.export

    files = locate(args.checkpoint)
    out = Path(args.out).expanduser()
    if args.format == "hf":
        return _run_hf(files, out, args)
    if out.is_dir():
        raise CliError(
            f"--out {out} is a directory; pass a file path such as {out / ('model.' + args.format)}"
        )
    if not out.parent.is_dir():
        raise CliError(f"--out {out}: the directory {out.parent} does not exist; create it first")
    model = _model(files, args)
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


def _model(files: RunFiles, args: argparse.Namespace) -> Any:
    """The compressed model: rebuilt from data (config.yaml + model.geta) for a run folder."""
    if files.run_dir is not None:
        return load_run(files, args).model
    return load_module(files.model, trust=args.trust_run_code)


def _run_hf(files: RunFiles, out: Path, args: argparse.Namespace) -> int:
    """``--format hf``: the run's Hugging Face model as a folder, with the run's report in its card."""
    import json
    import sys

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CliError(f"--out {out} exists and is not an empty directory; pass a new folder for --format hf")
    if not out.parent.is_dir():
        raise CliError(f"--out {out}: the directory {out.parent} does not exist; create it first")
    model = _model(files, args)
    transformers = sys.modules.get("transformers")  # loading a HF model imported it
    kind = transformers.PreTrainedModel if transformers else ()
    hf = next((m for m in model.modules() if isinstance(m, kind)), None)
    if hf is None:
        raise CliError(
            f"--format hf needs a Hugging Face model; {files.model} holds a {type(model).__name__}: "
            "use --format onnx or --format packed"
        )
    report_file = files.run_dir / "report.json" if files.run_dir else None
    report = json.loads(report_file.read_text()) if report_file and report_file.is_file() else None
    spec = report["options"]["model"] if report else None
    plain = bool(report and report["options"].get("uniform_layers"))
    with quiet_exporters():
        write_hf(hf.eval(), out, plain=plain, report=report, model_spec=spec)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size:,} bytes: integer weights, config, tokenizer if the run had one, README.md)")
    return 0
