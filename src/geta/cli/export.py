"""``geta export CHECKPOINT --format onnx|packed|hf|gguf --out PATH``: write a deployable file.

A thin wrapper over `geta.export.onnx` (QDQ graph, checked in onnxruntime),
`geta.export.packed` (integer codes at their bit width + a JSON manifest), for a Hugging Face
model `geta.cli.hfout.write_hf` (a folder plain transformers loads: integer weights, tokenizer,
model card; the same as a run's ``hf/``), and `geta.export.gguf` (llama.cpp's file for a Llama /
Qwen2 / Mistral run; the tokenizer comes from ``--tokenizer``, else the run's ``hf/`` folder,
else the ``hf:DIR`` checkpoint the run compressed).
"""

from __future__ import annotations

import argparse
import collections
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

FORMATS = ("onnx", "packed", "hf", "gguf")


def add_parser(subparsers: Any) -> None:
    """Register ``geta export``."""
    p = subparsers.add_parser(
        "export",
        help="export a compressed model to ONNX (QDQ), a packed low-bit file, a Hugging Face folder or GGUF",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    add_checkpoint_argument(p)
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx, packed, hf (a folder) or gguf")
    p.add_argument("--out", required=True, metavar="PATH", help="file to write (hf: a new or empty folder)")
    p.add_argument("--input-shape", metavar="SHAPE", help="example input shape for ONNX, e.g. 1,3,32,32")
    p.add_argument("--input-dtype", default="float32", metavar="DTYPE", help="example input dtype [float32]")
    p.add_argument(
        "--tokenizer",
        metavar="DIR",
        help="gguf: folder of the tokenizer.json to embed [the run's checkpoint]",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export CHECKPOINT and print what was written."""
    import geta.export

    if args.tokenizer is not None and args.format != "gguf":
        raise CliError(f"--tokenizer is read by --format gguf only, not --format {args.format}")
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
    elif args.format == "gguf":
        _gguf(model, files.run_dir, args.tokenizer, out)
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


def _gguf(model: Any, run_dir: Path | None, flag: str | None, out: Path) -> None:
    """Write the GGUF file and say what it holds."""
    import geta.export
    from geta.errors import GetaError

    tokenizer = _tokenizer_dir(run_dir, flag)
    try:
        info = geta.export.gguf(model, out, tokenizer=tokenizer)
    except ImportError as exc:
        raise CliError(
            f"GGUF export needs the gguf package ({exc}): pip install 'torch-geta[gguf]'"
        ) from None
    except GetaError as exc:
        raise CliError(f"--format gguf: {exc}") from None
    quantized = [t for t in info.tensors if t.rounding is not None]
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(collections.Counter(t.type for t in quantized).items()))
    print(
        f"wrote {out} ({info.file_bytes:,} bytes, {info.arch}; {len(quantized)} quantized tensors: "
        f"{kinds or 'none'}; fp16 block scales move the steps by at most "
        f"{info.max_step_relative_error:.2%}, the weights by at most {info.max_weight_diff:.2g})"
    )
    if info.sizes != info.pruned:
        print(f"  padded with zero units for 32-value blocks: {info.pruned} -> {info.sizes} (exact)")
    if tokenizer is None:
        print("  no tokenizer found: llama.cpp runs on token ids only; pass --tokenizer DIR to embed one")
    if info.dropped_input_quantizers:
        print(
            f"  {info.dropped_input_quantizers} activation quantizers are not in the file: "
            "llama.cpp quantizes activations its own way"
        )
