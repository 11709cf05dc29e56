"""``geta inspect``, ``geta report``, ``geta export`` and ``geta env``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from geta.cli.diagram import build_diagram, legend_entries, to_dot, to_svg

from .conftest import Result

ROOT = Path(__file__).resolve().parents[2]


def test_inspect_prints_groups_params_and_unknown_ops(geta_cli: Callable[..., Result]) -> None:
    result = geta_cli("inspect", "--weight-bits", "3,4", "--act-bits", "none")
    assert result.code == 0
    assert "6 prunable (288 units)" in result.out and "reason: feeds the model output" in result.out
    assert re.search(r"g0\s+34,208 / 1,069", result.out)
    assert "ops without a handler: none" in result.out
    # the summary lists every quantizer at its initial width; the output says so, and where training ends
    assert "16.00 bits" in result.out
    assert "bits above are the initial bits (16)" in result.out and "weights end in 3-4 bits" in result.out


_HAS_DOT = shutil.which("dot") is not None


@pytest.mark.parametrize(
    "suffix",
    [
        ".svg",
        ".html",
        ".dot",
        pytest.param(".png", marks=pytest.mark.skipif(not _HAS_DOT, reason="no Graphviz")),
    ],
)
def test_inspect_writes_graph_pictures(tmp_path: Path, suffix: str, geta_cli: Callable[..., Result]) -> None:
    path = tmp_path / f"graph{suffix}"
    assert geta_cli("inspect", "--model", "vgg", "--graph", path).code == 0
    if suffix == ".png":
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return
    text = path.read_text()
    marker = {".svg": "<svg", ".html": "<table>", ".dot": "digraph geta {"}[suffix]
    assert marker in text and "#8dd3c7" in text  # the first prunable group's colour
    assert "prune groups" in text and "g0: " in text and "frozen (not prunable)" in text  # the legend


def test_png_without_graphviz_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, geta_cli: Callable[..., Result]
) -> None:
    import geta.cli.diagram

    monkeypatch.setattr(geta.cli.diagram.shutil, "which", lambda name: None)
    result = geta_cli("inspect", "--model", "mlp", "--graph", tmp_path / "g.png")
    assert result.code == 2 and "Graphviz's dot" in result.err and "install graphviz" in result.err
    assert ".svg or .html, which need nothing" in result.err and not (tmp_path / "g.png").exists()


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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = geta_cli(
            "inspect", "--model", "netmod:build", "--input-shape", "2,5,8", "--act-bits", "none"
        )
    assert result.code == 0
    assert [str(w.message) for w in caught] == []  # torch.export's nn.LSTM warning stays inside
    assert "touches aten.lstm.input" in result.out and "ops without a handler: aten.lstm.input" in result.out


def test_diagram_of_a_residual_net_colours_both_branches() -> None:
    import geta
    from geta.recipes import build_model, load_data

    data = load_data("digits")
    plan = geta.prepare(build_model("resnet", data).eval(), data.example(2), geta.Config())
    d = build_diagram(plan)
    shortcut = d.boxes["4.shortcut.1"]
    body = d.boxes["4.body.4"]
    assert shortcut.produces == body.produces  # the residual add merges both into one group
    assert d.fill(shortcut) == d.fill(body) != "#ffffff"
    # the block's residual add is a box of its own, fed by both branches
    (add,) = {b for a, b in d.edges if a == "4.body.4"} & {b for a, b in d.edges if a == "4.shortcut.1"}
    assert d.boxes[add].label == "add"
    assert to_dot(d).count("->") == len(d.edges)
    assert to_svg(d).count("<rect") == len(d.boxes) + len(legend_entries(d))


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_diagram_edges_follow_the_data_flow(name: str) -> None:
    import geta
    from geta.recipes import build_model, load_data

    data = load_data("digits")
    d = build_diagram(geta.prepare(build_model(name, data).eval(), data.example(2), geta.Config()))
    order = {key: i for i, key in enumerate(d.boxes)}
    assert all(order[a] < order[b] for a, b in d.edges)  # no box folds a block's adds into a cycle
    for line in to_dot(d).splitlines():
        if line.strip().startswith("n") and "label=" in line:
            tags = re.findall(r"\bg\d+\b", line)
            assert len(tags) == len(set(tags)), line  # every group named once per box


def test_report_of_a_run_directory(finished_run: Path, geta_cli: Callable[..., Result]) -> None:
    saved = json.loads((finished_run / "report.json").read_text())
    result = geta_cli("report", finished_run, "--json")
    assert result.code == 0
    measured = json.loads(result.out)
    assert measured["totals"]["relative_bops"] == pytest.approx(saved["relative_bops"])
    assert measured["run"]["compressed"]["accuracy"] == saved["compressed"]["accuracy"]
    text = geta_cli("report", finished_run)
    assert text.code == 0 and "| layer | kind |" in text.out
    widths = [f"{r['width_out'][0]}/{r['width_out'][1]} out" for r in saved["layers"] if "width_out" in r]
    assert widths and all(w in text.out for w in widths)  # kept widths next to the bits, as in report.md
    assert all(w in (finished_run / "report.md").read_text() for w in widths)
    accuracy = re.search(r"^accuracy\s+([\d.]+)%\s+([\d.]+)%$", text.out, re.M)  # dense vs compressed
    assert accuracy is not None
    assert float(accuracy.group(1)) == pytest.approx(100 * saved["dense"]["accuracy"], abs=0.01)
    assert float(accuracy.group(2)) == pytest.approx(100 * saved["compressed"]["accuracy"], abs=0.01)
    refused = geta_cli("report", finished_run / "compressed.pt")  # a pickle: runs code when loaded
    assert refused.code == 2 and "--trust-run-code" in refused.err
    markdown = geta_cli("report", finished_run / "compressed.pt", "--trust-run-code")  # your own file
    assert markdown.code == 0 and "| layer | kind |" in markdown.out and "warning" in markdown.err
    assert f"(dense reference: {saved['dense']['macs']:,})" in markdown.out  # carried from prepare


def test_report_piped_into_head_ends_quietly(finished_run: Path) -> None:
    # the reader is gone before geta writes: exactly what `geta report DIR --json | head -0` does
    proc = subprocess.Popen(
        [sys.executable, "-m", "geta.cli.main", "report", str(finished_run), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert proc.returncode == 141


def test_export_both_formats(finished_run: Path, tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    onnx = geta_cli("export", finished_run, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert onnx.code == 0 and (tmp_path / "m.onnx").stat().st_size > 0
    packed = geta_cli("export", finished_run, "--format", "packed", "--out", tmp_path / "m.geta")
    assert packed.code == 0 and "bit-packed tensors" in packed.out
    # the run's model is rebuilt from model.geta: exporting it again gives the same bytes
    assert (tmp_path / "m.geta").read_bytes() == (finished_run / "model.geta").read_bytes()
    hf = geta_cli("export", finished_run, "--format", "hf", "--out", tmp_path / "hf")
    assert hf.code == 2 and "--format hf needs a Hugging Face model" in hf.err
    assert not (tmp_path / "hf").exists()


def test_env_lists_versions(geta_cli: Callable[..., Result]) -> None:
    result = geta_cli("env", "--json")
    info = json.loads(result.out)
    assert result.code == 0 and {"geta", "python", "torch", "transformers", "onnxruntime", "platform"} <= set(
        info
    )
    assert "Pillow" in info  # imagefolder data needs it
    assert isinstance(info["cuda available"], bool) and isinstance(info["threads"], int)


@pytest.mark.parametrize("command", ["compress", "inspect", "report", "export", "env"])
def test_every_subcommand_has_help(command: str, geta_cli: Callable[..., Result]) -> None:
    result = geta_cli(command, "--help")
    assert result.code == 0 and result.out.startswith(f"usage: geta {command}")
    documented = (ROOT / "docs" / "cli.md").read_text()
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", result.out)) - {"--help"}
    assert flags and {f for f in flags if f not in documented} == set()  # docs/cli.md covers --help


def test_hugging_face_model_inside_a_recipe_wrapper_is_found_for_save_pretrained() -> None:
    pytest.importorskip("transformers")
    from geta.cli.exporting import hf_model as _hf_model
    from geta.recipes.models import CausalLM
    from geta.testing import zoo

    lm, _ = zoo.build("hf_llama")
    assert _hf_model(CausalLM(lm)) is lm
    assert _hf_model(torch.nn.Linear(2, 2)) is None
