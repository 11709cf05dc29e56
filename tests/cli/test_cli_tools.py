"""``geta inspect``, ``geta report``, ``geta export`` and ``geta env``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from geta.cli.diagram import build_diagram, to_dot, to_svg
from geta.cli.main import build_parser

from .conftest import Result


def test_inspect_prints_groups_params_and_unknown_ops(geta_cli: Callable[..., Result]) -> None:
    result = geta_cli("inspect")
    assert result.code == 0
    assert "6 prunable (288 units)" in result.out and "reason: feeds the model output" in result.out
    assert re.search(r"g0\s+34,208 / 1,069", result.out)
    assert "ops without a handler: none" in result.out


@pytest.mark.parametrize("suffix", [".svg", ".html", ".dot"])
def test_inspect_writes_graph_pictures(tmp_path: Path, suffix: str, geta_cli: Callable[..., Result]) -> None:
    path = tmp_path / f"graph{suffix}"
    assert geta_cli("inspect", "--model", "vgg", "--graph", path).code == 0
    text = path.read_text()
    marker = {".svg": "<svg", ".html": "<table>", ".dot": "digraph geta {"}[suffix]
    assert marker in text and "#8dd3c7" in text  # the first prunable group's colour


@pytest.mark.filterwarnings("ignore:The tensor attributes:UserWarning")  # torch.export on nn.LSTM
def test_inspect_user_factory_with_input_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, geta_cli: Callable[..., Result]
) -> None:
    (tmp_path / "netmod.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.inp, self.lstm = torch.nn.Linear(8, 16), torch.nn.LSTM(16, 16, batch_first=True)\n"
        "        self.head = torch.nn.Linear(16, 4)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.lstm(torch.relu(self.inp(x)))[0][:, -1])\n"
        "def build():\n    return Net()\n"
    )
    monkeypatch.chdir(tmp_path)
    result = geta_cli("inspect", "--model", "netmod:build", "--input-shape", "2,5,8", "--act-bits", "none")
    assert result.code == 0
    assert "touches aten.lstm.input" in result.out and "ops without a handler: aten.lstm.input" in result.out


def test_diagram_of_a_residual_net_colours_both_branches() -> None:
    import geta
    from geta.recipes import build_model, load_data

    data = load_data("digits")
    plan = geta.prepare(build_model("resnet", data).eval(), data.example(2), geta.Config())
    d = build_diagram(plan)
    shortcut = d.boxes["4.shortcut.0"]
    body = d.boxes["4.body.3"]
    assert shortcut.produces == body.produces  # the residual add merges both into one group
    assert d.fill(shortcut) == d.fill(body) != "#ffffff"
    assert ("4.body.4", "4") in d.edges and to_dot(d).count("->") == len(d.edges)
    assert to_svg(d).count("<rect") == len(d.boxes)


def test_report_of_a_run_directory(finished_run: Path, geta_cli: Callable[..., Result]) -> None:
    result = geta_cli("report", finished_run, "--json")
    assert result.code == 0
    measured = json.loads(result.out)
    saved = json.loads((finished_run / "report.json").read_text())
    assert measured["totals"]["relative_bops"] == pytest.approx(saved["relative_bops"])
    markdown = geta_cli("report", finished_run / "compressed.pt")
    assert markdown.code == 0 and "| layer | kind |" in markdown.out


def test_export_both_formats(finished_run: Path, tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    onnx = geta_cli("export", finished_run, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert onnx.code == 0 and (tmp_path / "m.onnx").stat().st_size > 0
    packed = geta_cli(
        "export", finished_run / "compressed.pt", "--format", "packed", "--out", tmp_path / "m.geta"
    )
    assert packed.code == 0 and "bit-packed tensors" in packed.out


def test_env_lists_versions(geta_cli: Callable[..., Result]) -> None:
    result = geta_cli("env", "--json")
    info = json.loads(result.out)
    assert result.code == 0 and {"geta", "python", "torch", "transformers", "onnxruntime", "platform"} <= set(
        info
    )


def test_every_subcommand_has_help() -> None:
    parser = build_parser()
    text = parser.format_help()
    for name in ("compress", "inspect", "report", "export", "env"):
        assert name in text


def test_hugging_face_model_inside_a_recipe_wrapper_is_found_for_save_pretrained() -> None:
    pytest.importorskip("transformers")
    from geta.cli.outputs import _hf_model
    from geta.recipes.models import CausalLM
    from geta.testing import zoo

    lm, _ = zoo.build("hf_llama")
    assert _hf_model(CausalLM(lm)) is lm
    assert _hf_model(torch.nn.Linear(2, 2)) is None
