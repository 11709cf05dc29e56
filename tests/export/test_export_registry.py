"""The exporter registry: one signature, the CLI's --format choices from it, a toy format end to end.

The toy exporter below is the worked example of docs/contributing.md ("Add an exporter"):
registering it in one file is all it takes for ``geta export --format`` to offer it and run it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import geta
from geta.cli.main import build_parser, main
from geta.export.registry import exporter_names, get_exporter, register_exporter, unregister_exporter


# --- the worked example (docs/contributing.md) -------------------------------------------------
def write_shapes(
    model: nn.Module, path: str | Path, *, example_inputs: Any = None, tokenizer: Any = None, indent: int = 0
) -> dict[str, Any]:
    """Write every tensor's shape as JSON: a toy format with the uniform exporter signature."""
    shapes = {name: list(t.shape) for name, t in model.state_dict().items()}
    Path(path).write_text(json.dumps(shapes, indent=indent or None), encoding="utf-8")
    return {"path": str(path), "tensors": len(shapes)}


def describe_shapes(info: dict[str, Any], path: Path, used: dict[str, Any]) -> list[str]:
    """What ``geta export`` prints after writing the file."""
    return [f"wrote {path} ({info['tensors']} tensor shapes)"]


@pytest.fixture
def shapes_format() -> Iterator[str]:
    register_exporter(
        "shapes",
        write_shapes,
        help="the shape of every tensor as JSON",
        options=("indent",),
        describe=describe_shapes,
    )
    yield "shapes"
    unregister_exporter("shapes")


# -----------------------------------------------------------------------------------------------


def test_the_cli_offers_exactly_the_registered_formats(
    shapes_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exporter_names()[:4] == ("onnx", "packed", "hf", "gguf")  # built-ins first, then plugins
    args = build_parser().parse_args(["export", "run", "--format", shapes_format, "--out", "x"])
    assert args.format == shapes_format
    assert main(["export", "run", "--format", "bogus", "--out", "x"]) != 0
    offered = capsys.readouterr().err.split("choose from", 1)[1]
    assert re.findall(r"[a-z]+", offered) == list(exporter_names())


def test_a_registered_toy_format_works_through_the_cli(
    shapes_format: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    torch.save(model, tmp_path / "m.pt")
    out = tmp_path / "m.json"
    code = main(
        ["export", str(tmp_path / "m.pt"), "--trust-run-code", "--format", "shapes", "--out", str(out)]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert json.loads(out.read_text()) == {k: list(v.shape) for k, v in model.state_dict().items()}
    assert printed.out == f"wrote {out} (4 tensor shapes)\n"
    # a flag the format does not read is refused with the flag named
    code = main(["export", str(tmp_path / "m.pt"), "--trust-run-code", "--format", "shapes",
                 "--out", str(out), "--tokenizer", str(tmp_path)])  # fmt: skip
    assert (
        code != 0
        and "--tokenizer is read by --format gguf only, not --format shapes" in capsys.readouterr().err
    )


def test_the_uniform_call_checks_options_and_inputs(shapes_format: str, tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    info = geta.export.export("shapes", model, tmp_path / "a.json", indent=2)
    assert info["tensors"] == 2 and (tmp_path / "a.json").read_text().startswith("{\n  ")
    with pytest.raises(geta.ExportError, match=r"takes no option \['opset'\]; its options: \['indent'\]"):
        geta.export.export("shapes", model, tmp_path / "b.json", opset=17)
    with pytest.raises(geta.ExportError, match="needs example_inputs"):
        geta.export.export("onnx", model, tmp_path / "c.onnx")
    with pytest.raises(
        geta.ExportError, match="not a registered exporter; known: onnx, packed, hf, gguf, shapes"
    ):
        get_exporter("nope")


def test_names_are_registered_once(shapes_format: str) -> None:
    with pytest.raises(geta.ExportError, match="already registered"):
        register_exporter(shapes_format, write_shapes, help="again")
    with pytest.raises(geta.ExportError, match="model_kind='torch'"):
        register_exporter("other", write_shapes, help="x", model_kind="torch")
    assert "other" not in exporter_names()


def test_the_uniform_call_writes_what_the_public_function_writes(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    geta.export.packed(model, tmp_path / "a.geta")
    info = geta.export.export("packed", model, tmp_path / "b.geta")
    assert (tmp_path / "a.geta").read_bytes() == (tmp_path / "b.geta").read_bytes()
    assert info.file_bytes == (tmp_path / "b.geta").stat().st_size


def test_every_export_error_is_an_export_error() -> None:
    assert issubclass(geta.IntegrityError, geta.ExportError) and issubclass(geta.ExportError, geta.GetaError)
    assert geta.export.ExportError is geta.ExportError


def test_runs_write_the_formats_that_declare_a_run_file() -> None:
    runs = {e.report_key: e.run_file for e in geta.export.exporters() if e.run_file}
    assert runs == {"onnx": "model.onnx", "packed": "model.geta", "pretrained": "hf"}
    assert [e.name for e in geta.export.exporters() if e.always_in_runs] == ["packed"]
