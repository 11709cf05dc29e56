"""The built-in exporters, registered under their ``--format`` names: onnx, packed, hf, gguf.

Each is a thin adapter from the uniform `geta.export.registry.ExportFunction` call to the
public function that does the work (`geta.export.onnx`, `packed`, `pretrained`, `gguf`, whose
own signatures stay as they are), plus the facts the CLI and a run's exports read. The optional
packages (onnx, transformers, gguf) are imported only when an export runs.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from geta.export.registry import register_exporter

__all__: list[str] = []  # importing this module registers the formats; it exports no names


def _onnx(
    model: nn.Module, path: str | Path, *, example_inputs: Any = None, tokenizer: Any = None, **options: Any
) -> Any:
    from geta.export.onnx_export import onnx

    return onnx(model, example_inputs, path, **options)


def _onnx_lines(info: Any, path: Path, used: dict[str, Any]) -> list[str]:
    return [
        f"wrote {path} (opset {info.opset}, {len(info.tensors)} quantized tensors, "
        f"max relative difference to torch {info.max_relative_diff:.2g})"
    ]


def _packed(model: nn.Module, path: str | Path, *, example_inputs: Any = None, tokenizer: Any = None) -> Any:
    from geta.export.packfile import packed

    return packed(model, path)


def _packed_lines(info: Any, path: Path, used: dict[str, Any]) -> list[str]:
    fields = dataclasses.asdict(info)
    return [f"wrote {path} ({fields['file_bytes']:,} bytes, {fields['packed_tensors']} bit-packed tensors)"]


def _hf(
    model: nn.Module,
    path: str | Path,
    *,
    example_inputs: Any = None,
    tokenizer: Any = None,
    plain: bool = False,
    integer: bool = True,
    card: Callable[[Path], str] | None = None,
) -> Path:
    """`geta.export.pretrained`, then ``card(folder)`` as the folder's README.md if given."""
    from geta.export.pretrained import pretrained

    folder = Path(path)
    pretrained(model, folder, plain=plain, integer=integer, tokenizer=tokenizer)
    if card is not None:
        (folder / "README.md").write_text(card(folder), encoding="utf-8")
    return folder


def _hf_lines(info: Any, path: Path, used: dict[str, Any]) -> list[str]:
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return [
        f"wrote {path} ({size:,} bytes: integer weights, config, tokenizer if the run had one, README.md)"
    ]


def _gguf(
    model: nn.Module, path: str | Path, *, example_inputs: Any = None, tokenizer: Any = None, **options: Any
) -> Any:
    from geta.export.gguf_export import gguf

    return gguf(model, path, tokenizer=tokenizer, **options)


def _gguf_lines(info: Any, path: Path, used: dict[str, Any]) -> list[str]:
    quantized = [t for t in info.tensors if t.rounding is not None]
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(collections.Counter(t.type for t in quantized).items()))
    lines = [
        f"wrote {path} ({info.file_bytes:,} bytes, {info.arch}; {len(quantized)} quantized tensors: "
        f"{kinds or 'none'}; fp16 block scales move the steps by at most "
        f"{info.max_step_relative_error:.2%}, the weights by at most {info.max_weight_diff:.2g})"
    ]
    if info.sizes != info.pruned:
        lines.append(f"  padded with zero units for 32-value blocks: {info.pruned} -> {info.sizes} (exact)")
    if used.get("tokenizer") is None:
        lines.append(
            "  no tokenizer found: llama.cpp runs on token ids only; pass --tokenizer DIR to embed one"
        )
    if info.dropped_input_quantizers:
        lines.append(
            f"  {info.dropped_input_quantizers} activation quantizers are not in the file: "
            "llama.cpp quantizes activations its own way"
        )
    return lines


_ONNX_OPTIONS = ("opset", "check", "saturation_safe", "dynamic_batch", "dynamic_sequence", "dynamic_shapes",
                 "fold_batchnorm", "integer_convolutions")  # fmt: skip

register_exporter(
    "onnx", _onnx, help="ONNX with QuantizeLinear/DequantizeLinear, checked in onnxruntime",
    needs_example_inputs=True, options=_ONNX_OPTIONS, title="ONNX",
    requires="onnx, onnxruntime and onnxscript", extra="onnx",
    run_file="model.onnx", describe=_onnx_lines,
)  # fmt: skip
register_exporter(
    "packed", _packed, help="integer codes at their bit width and a JSON manifest (model.geta)",
    run_file="model.geta", always_in_runs=True, describe=_packed_lines,
)  # fmt: skip
register_exporter(
    "hf", _hf, help="a Hugging Face save_pretrained folder with integer weights",
    folder=True, model_kind="hf", options=("plain", "integer", "card"), title="Hugging Face",
    run_file="hf", run_key="pretrained", describe=_hf_lines,
)  # fmt: skip
register_exporter(
    "gguf", _gguf, help="llama.cpp's GGUF file from a Llama / Qwen2 / Mistral run",
    model_kind="hf-causal-lm", tokenizer_folder=True, options=("float_type", "name", "pre"), title="GGUF",
    requires="the gguf package", extra="gguf", errors_name_format=True, describe=_gguf_lines,
)  # fmt: skip
