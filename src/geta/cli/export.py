"""``geta export CHECKPOINT --format FORMAT --out PATH``: write a deployable file.

The formats are the registered exporters (`geta.export.registry`; the built-ins in
`geta.export.formats`): ``onnx`` (`geta.export.onnx`, a QDQ graph checked in onnxruntime),
``packed`` (`geta.export.packed`, integer codes at their bit width + a JSON manifest), ``hf``
for a Hugging Face model (a folder plain transformers loads: integer weights, tokenizer, model
card; the same as a run's ``hf/``) and ``gguf`` (`geta.export.gguf`, llama.cpp's file for a
Llama / Qwen2 / Mistral run; the tokenizer comes from ``--tokenizer``, else the run's ``hf/``
folder, else the ``hf:DIR`` checkpoint the run compressed). What each needs (example inputs,
a Hugging Face model, a tokenizer folder) comes from its registration, not from this module.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from geta.cli.artifacts import RunFiles, add_checkpoint_argument, load_inputs, load_module, locate
from geta.cli.errors import CliError
from geta.cli.exporting import hf_model, write_format
from geta.cli.rebuild import load_run
from geta.errors import GetaError
from geta.export.registry import Exporter, exporter_names, exporters, get_exporter

__all__ = ["add_parser", "run"]


def _flags(names: list[str]) -> str:
    return " or ".join(f"--format {n}" for n in names)


def add_parser(subparsers: Any) -> None:
    """Register ``geta export``: the ``--format`` choices are the registered exporters."""
    names = exporter_names()
    p = subparsers.add_parser(
        "export",
        help="export a compressed model to ONNX (QDQ), a packed low-bit file, a Hugging Face folder or GGUF",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    add_checkpoint_argument(p)
    shown = [f"{e.name} (a folder)" if e.folder else e.name for e in exporters()]
    p.add_argument("--format", required=True, choices=names, help=", ".join(shown[:-1]) + f" or {shown[-1]}")
    p.add_argument("--out", required=True, metavar="PATH", help="file to write (hf: a new or empty folder)")
    p.add_argument("--input-shape", metavar="SHAPE", help="example input shape for ONNX, e.g. 1,3,32,32")
    p.add_argument("--input-dtype", default="float32", metavar="DTYPE", help="example input dtype [float32]")
    readers = [e.name for e in exporters() if e.tokenizer_folder]
    p.add_argument(
        "--tokenizer",
        metavar="DIR",
        help=f"{', '.join(readers)}: folder of the tokenizer.json to embed [the run's checkpoint]",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export CHECKPOINT with the registered exporter ``--format`` and print what was written."""
    entry = get_exporter(args.format)
    if args.tokenizer is not None and not entry.tokenizer_folder:
        readers = [e.name for e in exporters() if e.tokenizer_folder]
        raise CliError(f"--tokenizer is read by {_flags(readers)} only, not --format {args.format}")
    files = locate(args.checkpoint)
    out = Path(args.out).expanduser()
    _check_out(entry, out)
    model = _model(files, args)
    if entry.model_kind == "hf" and hf_model(model) is None:
        others = [e.name for e in exporters() if e.model_kind == "any"]
        raise CliError(
            f"--format {entry.name} needs a Hugging Face model; {files.model} holds a "
            f"{type(model).__name__}: use {_flags(others)}"
        )
    inputs = load_inputs(files, args.input_shape, args.input_dtype) if entry.needs_example_inputs else None
    report = _report(files) if entry.model_kind == "hf" or {"card", "plain"} & set(entry.options) else None
    folder = _tokenizer_dir(files.run_dir, args.tokenizer) if entry.tokenizer_folder else None
    plain = bool(report and report["options"].get("uniform_layers"))
    try:
        info, used = write_format(
            entry, model, out, inputs=inputs, report=report, plain=plain, tokenizer_folder=folder
        )
    except ImportError as exc:
        if not entry.requires:
            raise
        raise CliError(
            f"{entry.label} export needs {entry.requires} ({exc}): pip install 'torch-geta[{entry.extra}]'"
        ) from None
    except GetaError as exc:
        if not entry.errors_name_format:
            raise
        raise CliError(f"--format {entry.name}: {exc}") from None
    for line in entry.summary(info, out, used):
        print(line)
    return 0


def _check_out(entry: Exporter, out: Path) -> None:
    """``--out``: a new or empty folder for a folder format, else a file path in an existing folder."""
    if entry.folder:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise CliError(
                f"--out {out} exists and is not an empty directory; "
                f"pass a new folder for --format {entry.name}"
            )
    elif out.is_dir():
        raise CliError(
            f"--out {out} is a directory; pass a file path such as {out / ('model.' + entry.name)}"
        )
    if not out.parent.is_dir():
        raise CliError(f"--out {out}: the directory {out.parent} does not exist; create it first")


def _report(files: RunFiles) -> dict[str, Any] | None:
    """The run's report.json (its options and results), or None outside a run folder."""
    report_file = files.run_dir / "report.json" if files.run_dir else None
    return json.loads(report_file.read_text()) if report_file and report_file.is_file() else None


def _model(files: RunFiles, args: argparse.Namespace) -> Any:
    """The compressed model: rebuilt from data (config.yaml + model.geta) for a run folder."""
    if files.run_dir is not None:
        return load_run(files, args).model
    return load_module(files.model, trust=args.trust_run_code)


def _tokenizer_dir(run_dir: Path | None, flag: str | None) -> Path | None:
    """--tokenizer, else the run's hf/ folder, else the hf:DIR checkpoint in its config.yaml."""
    if flag is not None:
        folder = Path(flag).expanduser()
        if not (folder / "tokenizer.json").is_file() and not folder.is_file():
            raise CliError(f"--tokenizer {flag}: no tokenizer.json there; pass the folder holding it")
        return folder
    if run_dir is None:
        return None
    if (run_dir / "hf" / "tokenizer.json").is_file():
        return run_dir / "hf"
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        model = str((yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("model", ""))
        folder = Path(model.removeprefix("hf:")).expanduser()
        if model.startswith("hf:") and (folder / "tokenizer.json").is_file():
            return folder
    return None
