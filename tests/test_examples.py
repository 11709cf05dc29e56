"""The examples in the repository run (they are documentation too)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_quickstart_runs_and_converts_exactly() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert "parameters:" in out.stdout
    diff = float(out.stdout.strip().splitlines()[-1].split()[-1])
    assert diff < 1e-4


def _readme_api_block() -> list[str]:
    """The lines of the README's first ``python`` block under ``## API`` (imports aside)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("import ")]


def test_readme_api_example_is_the_api_script() -> None:
    script = (ROOT / "examples" / "api.py").read_text()
    body = script.split("# --- the README's example from here on", 1)[1].split("# --- end of", 1)[0]
    lines = [line[4:] for line in body.splitlines()[1:] if line.strip() and "# fmt:" not in line]
    readme = _readme_api_block()
    assert readme == lines[: len(readme)]  # the README shows the script's lines, in order


def test_api_script_compresses_and_reports_against_the_original() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "api.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    macs, reference = re.search(r"- MACs: ([\d,]+) \(dense reference: ([\d,]+)\)", out.stdout).groups()
    assert int(macs.replace(",", "")) < int(reference.replace(",", ""))  # convert removed units
    relative = float(re.search(r"relative to dense FP32: ([\d.]+)%", out.stdout).group(1))
    sparsity = float(re.search(r"group sparsity ([\d.]+);", out.stdout).group(1))
    assert relative <= 1.0 and sparsity > 0  # the README's budget (target_bops=0.01), widths chosen


def test_hf_trainer_example_compresses_with_qasso_as_the_trainers_optimizer() -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "hf_trainer.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    steps, total = re.search(
        r"trainer steps: (\d+) \(schedule (\d+)\), final stage: cooldown", out.stdout
    ).groups()
    assert steps == total  # one QASSO step per Trainer step
    assert "group sparsity 0.50" in out.stdout
    assert "quantizers 1.00e-03" in out.stdout  # the scheduler kept lr_quant
    before, after = (
        int(n.replace(",", "")) for n in re.search(r"parameters: ([\d,]+) -> ([\d,]+)", out.stdout).groups()
    )
    assert after < before
    assert float(out.stdout.strip().splitlines()[-1].split()[-1]) < 1e-4  # convert == the trained model
