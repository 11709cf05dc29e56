"""One writer per ``--out``, publishing that survives a crash, and bad input found before any work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import geta.cli.job
import geta.cli.outputs as outputs
from geta.cli.checkpoint import state_path
from geta.cli.outputs import RunStatus, run_status
from geta.cli.runlock import RunLock, holder, lock_path

from .conftest import TINY, Result, report_numbers

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any training step fail the test: the checks must come before the first one."""

    def train_epoch(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started before the input was checked")

    monkeypatch.setattr(geta.cli.job, "train_epoch", train_epoch)


def _one_line(result: Result) -> str:
    """The one error line of a refused command (warnings aside); no traceback."""
    lines = [line for line in result.err.splitlines() if line.strip() and ": warning: " not in line]
    assert result.code == 2 and len(lines) == 1 and "Traceback" not in result.err, result.err
    return lines[0]


# -- the lock --------------------------------------------------------------------------------------


def test_a_second_run_on_a_live_out_is_refused_and_the_first_finishes(
    tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    first = subprocess.Popen(
        [sys.executable, "-m", "geta.cli.main", "compress", "--out", str(out), *TINY],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while holder(out) is None and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert holder(out) is not None, "the first run never took the lock"
        second = geta_cli("compress", "--out", out, *TINY)
        assert first.poll() is None, "the second run must be refused at once, not wait for the first"
        line = _one_line(second)
        assert "in use by another geta compress" in line and f"pid {first.pid} " in line
        for flag in ("--overwrite", "--resume"):  # neither may touch a live run
            assert "in use" in _one_line(geta_cli("compress", "--out", out, *TINY, flag))
        assert run_status(out) is RunStatus.RUNNING  # a live run is never "interrupted"
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert (out / "report.json").is_file() and not state_path(out).exists()
    assert holder(out) is None and not lock_path(out).exists()


def test_the_lock_is_held_once_and_released_by_its_holder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with RunLock(out):
        assert holder(out) is not None and f"pid {os.getpid()} " in str(holder(out))
        with pytest.raises(geta.cli.errors.CliError, match="in use by another geta compress"):
            RunLock(out).acquire()
    assert holder(out) is None
    with RunLock(out):  # free again
        pass


def test_a_killed_holder_leaves_the_folder_free(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = (
        "import os, sys; from pathlib import Path; from geta.cli.runlock import RunLock; "
        "RunLock(Path(sys.argv[1])).acquire(); os._exit(9)"  # dies holding the lock, file left
    )
    assert subprocess.run([sys.executable, "-c", code, str(out)], check=False).returncode == 9
    assert lock_path(out).exists() and holder(out) is None
    with RunLock(out):
        assert f"pid {os.getpid()} " in str(holder(out))


# -- a crash inside publish, then --resume ---------------------------------------------------------


class _Crash(BaseException):
    """A process death: nothing after it runs (no handler catches a BaseException of this kind)."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A straight run, and one stopped after its last epoch (only the results are left to write)."""
    from geta.cli.main import main

    root = tmp_path_factory.mktemp("publish")
    assert main(["compress", "--out", str(root / "straight"), *TINY]) == 0
    assert main(["compress", "--out", str(root / "end"), *TINY, "--stop-after-epochs", "3"]) == 130
    return {"straight": root / "straight", "end": root / "end"}


def _crash_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Die at the ``step``-th file move/removal of `publish` (0-based); all later ones die too."""
    calls = {"n": 0}
    move, remove = outputs._move, outputs._remove

    def make(real: Callable[..., None]) -> Callable[..., None]:
        def fs(*args: Path) -> None:
            calls["n"] += 1
            if calls["n"] > step:
                raise _Crash
            real(*args)

        return fs

    monkeypatch.setattr(outputs, "_move", make(move))
    monkeypatch.setattr(outputs, "_remove", make(remove))


def _resume_matches(out: Path, straight: Path, geta_cli: Callable[..., Result]) -> None:
    again = geta_cli("compress", "--out", out, *TINY, "--resume")
    assert again.code == 0, again.err
    assert report_numbers(out) == report_numbers(straight)
    assert (out / "config.yaml").read_bytes() == (straight / "config.yaml").read_bytes()
    assert not state_path(out).exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"], "leftovers beside the run"


@pytest.mark.parametrize("step", [0, 1, 2], ids=["before-moving-out", "before-moving-in", "before-cleanup"])
def test_a_crash_inside_publish_is_completed_by_resume(
    runs: dict[str, Path],
    tmp_path: Path,
    step: int,
    geta_cli: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    shutil.copytree(runs["end"], out)
    _crash_at(monkeypatch, step)
    with pytest.raises(_Crash):
        geta_cli("compress", "--out", out, *TINY, "--resume")
    monkeypatch.undo()
    assert not (step == 1 and out.exists())  # the window where the folder is moved away
    _resume_matches(out, runs["straight"], geta_cli)


def test_a_crash_while_writing_results_resumes(
    runs: dict[str, Path], tmp_path: Path, geta_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    shutil.copytree(runs["end"], out)
    (tmp_path / f".out.staging-{os.getpid() + 1}").mkdir()  # a killed run's half-written results
    (tmp_path / f".out.staging-{os.getpid() + 1}" / "dense.pt").write_bytes(b"half")
    real = outputs.write_plots

    def crash(*args: object, **kwargs: object) -> list[str]:
        raise RuntimeError("disk full")

    monkeypatch.setattr(outputs, "write_plots", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        geta_cli("compress", "--out", out, *[a for a in TINY if a != "--no-plots"], "--resume")
    assert not list(tmp_path.glob(".out.staging-*"))[1:]  # this run's staging folder is gone
    monkeypatch.setattr(outputs, "write_plots", real)
    _resume_matches(out, runs["straight"], geta_cli)


def test_a_run_moved_away_with_half_written_results_is_rolled_back(
    runs: dict[str, Path], tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    out = tmp_path / "out"
    shutil.copytree(runs["end"], tmp_path / ".out.old-4242")  # out moved away ...
    (tmp_path / ".out.staging-4242").mkdir()  # ... and its results never finished
    _resume_matches(out, runs["straight"], geta_cli)


# -- bad input found before any work ----------------------------------------------------------------


def test_an_unwritable_out_fails_before_training(
    tmp_path: Path, geta_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_training(monkeypatch)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    places = [a_file / "out", Path("/proc/geta-no-such-dir/out")]
    if os.geteuid() != 0:  # root writes through permissions
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o555)
        places.append(locked / "out")
    for out in places:
        line = _one_line(geta_cli("compress", "--out", out, *TINY))
        assert f"--out {out}" in line and "write" in line


def test_an_infeasible_budget_fails_before_training_and_leaves_the_folder_free(
    tmp_path: Path, geta_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_training(monkeypatch)
    out = tmp_path / "run"
    line = _one_line(geta_cli("compress", "--out", out, *TINY, "--target-bops", "1e-6"))
    assert "--target-bops 1e-06 cannot be met" in line and "Config." not in line
    floor = float(line.split("pass --target-bops ")[1].split()[0])
    assert 1e-6 < floor < 1
    assert run_status(out) is RunStatus.NEW  # not blocked: a plain run may start there


def test_a_diverging_dense_phase_stops_at_the_step(tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    out = tmp_path / "run"
    line = _one_line(geta_cli("compress", "--out", out, *TINY, "--dense-lr", "1e6"))
    assert "dense training diverged at epoch 1, batch" in line and "lower --dense-lr (now 1e+06)" in line
    batch = int(line.split("batch ")[1].split()[0])
    assert batch < 23  # the first epoch (23 batches) did not finish
    assert not state_path(out).exists()  # nothing with NaN in it was saved


def test_resume_of_a_finished_run_refuses_other_options(
    runs: dict[str, Path], tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    out = tmp_path / "out"
    shutil.copytree(runs["straight"], out)
    before = (out / "report.json").read_bytes()
    line = _one_line(geta_cli("compress", "--out", out, *TINY, "--resume", "--sparsity", "0.3"))
    assert "--sparsity none -> 0.3" in line
    assert "already complete" in geta_cli("compress", "--out", out, *TINY, "--resume").err
    (out / "report.json").write_text("{not json")
    line = _one_line(geta_cli("compress", "--out", out, *TINY, "--resume"))
    assert "is not a geta report" in line and "already complete" not in line
    (out / "report.json").write_bytes(before)
    assert json.loads((out / "report.json").read_text())["options"]["sparsity"] is None
