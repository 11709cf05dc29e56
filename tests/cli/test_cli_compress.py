"""``geta compress`` end to end: outputs, report.json, atomic publishing, exact resume."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from geta.cli.checkpoint import state_path
from geta.cli.progress import TqdmReporter

from .conftest import TINY, Result, report_numbers


def test_finished_run_writes_every_output(finished_run: Path) -> None:
    names = {p.name for p in finished_run.iterdir()}
    assert {
        "report.json",
        "report.md",
        "compressed.pt",
        "dense.pt",
        "inputs.pt",
        "config.yaml",
        "model.onnx",
        "model.geta",
        "checksums.json",
    } <= names
    assert not state_path(finished_run).parent.exists(), "a finished run keeps no checkpoint"
    report = json.loads((finished_run / "report.json").read_text())
    for side in ("dense", "compressed"):
        assert {"accuracy", "macs", "bops", "params", "size_bytes"} <= set(report[side])
    assert 0 < report["relative_bops"] < 0.1 and 0 < report["group_sparsity"] < 1  # widths chosen
    assert report["layers"] and {"name", "macs", "weight_bits", "act_bits", "kept_out"} <= set(
        report["layers"][0]
    )
    assert "error" not in report["exports"]["onnx"] and report["exports"]["packed"]["bytes"] > 0
    assert [r["phase"] for r in report["history"]] == ["dense", "compress", "compress"]
    path = [r["relative_bops"] for r in report["history"] if r["phase"] == "compress"]  # per epoch
    assert len(path) == 2 and path[-1] == pytest.approx(report["relative_bops"])  # ends where convert does
    model = torch.load(finished_run / "compressed.pt", weights_only=False)
    inputs = torch.load(finished_run / "inputs.pt", weights_only=True)
    assert model(*inputs).shape == (1, 10)
    assert "| layer | kind |" in (finished_run / "report.md").read_text()
    assert not list(finished_run.parent.glob(".out.*")), "staging folders must be gone"


def test_onnx_file_agrees_with_the_torch_model_on_many_inputs(finished_run: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from geta.export.onnx_export import ORT_SESSION_CONFIG
    from geta.recipes import load_data

    options = ort.SessionOptions()
    for key, value in ORT_SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(str(finished_run / "model.onnx"), options)
    name = session.get_inputs()[0].name
    model = torch.load(finished_run / "compressed.pt", weights_only=False).eval()
    data = load_data("digits", seed=0)
    x = data.inputs(data.x_test[:32])  # test images, not the one example the export was checked on
    with torch.no_grad():
        expected = model(x)
    got = torch.cat([torch.from_numpy(session.run(None, {name: xi[None].numpy()})[0]) for xi in x])
    agree = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    assert agree >= 31 / 32
    assert (got - expected).abs().max().item() <= 1e-3 * expected.abs().max().item()


def test_plots_are_written(tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    out = tmp_path / "run"
    argv = [a for a in TINY if a != "--no-plots"]
    assert geta_cli("compress", "--out", out, *argv, "--sparsity", "0.25").code == 0
    for name in ("training_curves.png", "layers.png", "tradeoff.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_summary_table_is_printed(tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    argv = [a for a in TINY if a != "--quiet"]
    result = geta_cli("compress", "--out", tmp_path / "run", *argv, "--act-bits", "none")
    assert result.code == 0
    assert "BOPs (W+A)" in result.out and "group sparsity" in result.out and "compressed" in result.out
    assert "compress epoch 2/2 [cooldown]" in result.err  # off a terminal: one line per epoch ...
    epochs = [line for line in result.err.splitlines() if " epoch " in line and "[" in line]
    assert len(epochs) == 3 and all("ETA " in line for line in epochs)  # ... with the run's ETA
    assert "converting, evaluating and exporting" in result.err and "done in " in result.err
    assert "compression epochs: warm-up 0, projection 0, joint 1, cool-down 1 (2 in total)" in result.err
    assert "warning: --epochs 2 leaves no epoch for warm-up and projection" in result.err


def test_stop_and_resume_gives_identical_numbers(tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert geta_cli("compress", "--out", straight, *TINY).code == 0
    t0 = time.perf_counter()
    stopped = geta_cli("compress", "--out", resumed, *TINY, "--stop-after-epochs", "2")
    first = time.perf_counter() - t0
    assert stopped.code == 130 and "--resume" in stopped.err
    assert state_path(resumed).is_file() and not (resumed / "report.json").exists()
    t0 = time.perf_counter()
    again = geta_cli("compress", "--out", resumed, *[a for a in TINY if a != "--quiet"], "--resume")
    second = time.perf_counter() - t0
    assert again.code == 0 and "resuming at epoch 2 of the compression" in again.err
    assert report_numbers(resumed) == report_numbers(straight)
    wall = json.loads((resumed / "report.json").read_text())["wall_seconds"]
    assert 0.9 * (first + second) <= wall <= first + second  # both processes, not just the last
    assert not state_path(resumed).parent.exists()


def test_an_interrupted_run_is_kept_unless_a_flag_says_otherwise(
    tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    out = tmp_path / "run"
    assert geta_cli("compress", "--out", out, *TINY, "--stop-after-epochs", "1").code == 130
    saved = state_path(out).read_bytes()
    plain = geta_cli("compress", "--out", out, *TINY)
    assert plain.code == 2 and "holds an interrupted run; pass --resume" in plain.err
    assert state_path(out).read_bytes() == saved
    both = geta_cli("compress", "--out", out, *TINY, "--resume", "--overwrite")
    assert both.code == 2 and state_path(out).read_bytes() == saved
    fresh = geta_cli("compress", "--out", out, *TINY, "--overwrite", "--stop-after-epochs", "1")
    assert fresh.code == 130 and "dense epoch 1" in fresh.err  # started over, not resumed


def test_a_finished_run_is_replaced_only_with_overwrite(
    tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    out = tmp_path / "again"
    assert geta_cli("compress", "--out", out, *TINY).code == 0
    first = (out / "report.json").read_bytes()
    stamp = (out / "compressed.pt").stat().st_mtime_ns
    refused = geta_cli("compress", "--out", out, *TINY, "--sparsity", "0.25")
    assert refused.code == 2 and "holds a finished run; pass --overwrite" in refused.err
    done = geta_cli("compress", "--out", out, *TINY, "--resume")
    assert done.code == 0 and "already complete" in done.err
    assert (out / "report.json").read_bytes() == first and (out / "compressed.pt").stat().st_mtime_ns == stamp
    assert geta_cli("compress", "--out", out, *TINY, "--sparsity", "0.25", "--overwrite").code == 0
    second = json.loads((out / "report.json").read_text())
    assert json.loads(first)["options"]["sparsity"] is None and second["options"]["sparsity"] == 0.25
    assert not state_path(out).parent.exists()


def test_ctrl_c_mid_epoch_then_resume(
    tmp_path: Path, geta_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert geta_cli("compress", "--out", straight, *TINY).code == 0
    calls = {"n": 0}
    original = TqdmReporter.batch

    def batch(self: TqdmReporter, stats: object, extra: dict[str, float]) -> None:
        calls["n"] += 1
        if calls["n"] == 30:  # inside the first compression epoch (23 dense batches per epoch)
            os.kill(os.getpid(), signal.SIGINT)
        original(self, stats, extra)  # type: ignore[arg-type]

    monkeypatch.setattr(TqdmReporter, "batch", batch)
    stopped = geta_cli("compress", "--out", resumed, *TINY)
    assert stopped.code == 130 and "stopped at compress epoch 1, batch 7" in stopped.err
    monkeypatch.setattr(TqdmReporter, "batch", original)
    assert geta_cli("compress", "--out", resumed, *TINY, "--resume").code == 0
    assert report_numbers(resumed) == report_numbers(straight)


def test_dense_checkpoint_skips_dense_training(
    finished_run: Path, tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    out = tmp_path / "reuse"
    result = geta_cli("compress", "--out", out, *TINY, "--dense-checkpoint", finished_run / "dense.pt")
    assert result.code == 0
    report = json.loads((out / "report.json").read_text())
    original = json.loads((finished_run / "report.json").read_text())
    assert [r["phase"] for r in report["history"]] == ["compress", "compress"]
    assert report["dense"]["accuracy"] == original["dense"]["accuracy"]


def test_resume_refuses_changed_options(tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    out = tmp_path / "run"
    assert geta_cli("compress", "--out", out, *TINY, "--stop-after-epochs", "1").code == 130
    result = geta_cli("compress", "--out", out, *TINY, "--resume", "--sparsity", "0.3")
    assert result.code == 2 and "sparsity none -> 0.3" in result.err and "Traceback" not in result.err
