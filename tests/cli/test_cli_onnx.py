"""The run's ``model.onnx``: any batch and length, a language model's own inputs and outputs, and
no file (but a reason in the report) when its parity check fails."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from .conftest import TINY, Result

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SOURCE = Path(fnmatch.__file__)  # standard-library text to model (6 kB)


@pytest.mark.slow  # trains a Llama for 3 epochs (about 25 s of CPU)
def test_a_language_model_run_writes_an_onnx_of_any_shape(
    tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    import onnxruntime as ort

    pytest.importorskip("transformers")
    out = tmp_path / "run"
    result = geta_cli(
        "compress", "--model", "llama", "--data", f"text:{SOURCE}", "--seq-len", "16", "--dense-epochs", "1",
        "--epochs", "2", "--batch-size", "64", "--no-plots", "--quiet", "--out", out,
    )  # fmt: skip
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    onnx_info = report["exports"]["onnx"]
    assert "error" not in onnx_info and onnx_info["path"] == "model.onnx"
    assert onnx_info["dynamic_axes"]["input_ids"] == {"0": "batch", "1": "sequence"}
    (example,) = torch.load(out / "inputs.pt", weights_only=True)
    assert example.shape == (1, 16) and example.untyped_storage().nbytes() == 16 * 8  # the example only
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    small = torch.load(out / "compressed.pt", weights_only=False).eval()
    ids = torch.randint(0, 256, (3, 11))  # byte-level text (256 ids); another batch and length
    with torch.no_grad():
        expected = small(ids).numpy()
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": torch.ones_like(ids).numpy()})[0]
    assert abs(got - expected).max() <= 1e-3 * abs(expected).max()


def test_a_failed_parity_check_leaves_no_onnx_and_the_report_says_why(
    tmp_path: Path, geta_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    import geta.export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "check_parity", lambda *a, **k: (0.5, 0.9))
    out = tmp_path / "run"
    argv = [a for a in TINY if a not in ("--no-export", "--quiet")]
    result = geta_cli("compress", "--out", out, *argv)
    assert result.code == 0, result.err
    names = {p.name for p in out.iterdir()}
    assert "model.onnx" not in names and "model.geta" in names
    assert not [n for n in names if n.startswith(".")], "no staging files of the export"
    error = json.loads((out / "report.json").read_text())["exports"]["onnx"]["error"]
    assert "does not reproduce the torch model" in error and "no file written" in error
    assert "does not reproduce the torch model" in (out / "report.md").read_text()
    wrote = next(line for line in result.out.splitlines() if line.startswith("wrote"))
    assert "model.onnx" not in wrote and "onnx export failed" in result.err
