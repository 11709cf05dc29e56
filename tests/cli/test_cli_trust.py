"""Nothing in a run folder runs code, and a damaged run file is one clear line.

Each attack writes a payload that, if run, creates a marker file; the test asserts the marker
is never written: a pickled ``compressed.pt`` and ``--dense`` file, a ``config.yaml`` that
names a module in the run folder or a CIFAR folder of pickles, a checkpoint whose options
name them. A flipped byte in ``model.geta``, ``dense.pt`` or ``state.pt`` is detected and named.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from geta.cli.checkpoint import CHECKSUMS, load_state, save_state, state_path
from geta.cli.errors import CliError
from geta.cli.options import CompressOptions
from geta.cli.runstate import RunState

from .conftest import TINY, Result


class _Payload:
    """Unpickling this object writes ``marker`` (what a hostile pickle could do, and worse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def _evil_pickle(path: Path, marker: Path) -> Path:
    torch.save(_Payload(marker), path)
    return path


def _copy_run(finished_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    return run


def _edit_config(run: Path, **changes: str) -> None:
    """Rewrite config.yaml and drop checksums.json, as an attacker who edits both would."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    config.update(changes)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / CHECKSUMS).unlink()


def _evil_module(folder: Path, marker: Path, name: str = "evil") -> None:
    (folder / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "import torch\n\ndef build(num_classes):\n    return torch.nn.Linear(64, num_classes)\n"
    )


def _evil_cifar(folder: Path, marker: Path) -> Path:
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": _Payload(marker), b"labels": [0]}, protocol=2))
    return folder


def test_report_and_export_never_read_compressed_pt(
    finished_run: Path, tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    run, marker = _copy_run(finished_run, tmp_path), tmp_path / "marker"
    _evil_pickle(run / "compressed.pt", marker)
    assert geta_cli("report", run).code == 0
    assert geta_cli("export", run, "--format", "packed", "--out", tmp_path / "m.geta").code == 0
    assert not marker.exists()


def test_a_pickled_module_file_needs_trust(
    finished_run: Path, tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    marker = tmp_path / "marker"
    evil = _evil_pickle(tmp_path / "model.pt", marker)
    for argv in (
        ["report", evil, "--input-shape", "1,1,8,8"],
        ["export", evil, "--format", "packed", "--out", tmp_path / "m.geta"],
        ["report", finished_run, "--dense", evil],
    ):
        result = geta_cli(*argv)
        assert result.code == 2 and "--trust-run-code" in result.err, result.err
    assert not marker.exists()


def test_dense_state_dict_is_read_without_trust(finished_run: Path, geta_cli: Callable[..., Result]) -> None:
    result = geta_cli("report", finished_run, "--dense", finished_run / "dense.pt")
    assert result.code == 0 and "(dense reference: 50,432)" in result.out  # the mlp on digits


def test_config_module_in_the_run_folder_is_not_imported(
    finished_run: Path, tmp_path: Path, geta_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    run, marker = _copy_run(finished_run, tmp_path), tmp_path / "marker"
    _evil_module(run, marker)
    _edit_config(run, model="evil:build")
    monkeypatch.chdir(run)  # `geta report .` from inside the shared folder
    refused = geta_cli("report", ".")
    assert refused.code == 2 and "--model evil:build" in refused.err
    named = geta_cli("report", ".", "--model", "evil:build")  # named, but the file is the folder's
    assert named.code == 2 and "inside the run folder" in named.err
    assert not marker.exists()


def test_config_data_folder_of_pickles_is_not_unpickled(
    finished_run: Path, tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    run, marker = _copy_run(finished_run, tmp_path), tmp_path / "marker"
    _edit_config(run, data=f"cifar10:{_evil_cifar(tmp_path / 'cifar', marker)}")
    result = geta_cli("report", run)
    assert result.code == 2 and "CIFAR-10 file" in result.err and "refused" in result.err
    assert not marker.exists()


def _checkpoint(out: Path, **options: str) -> None:
    """An interrupted run's state.pt whose options say ``options`` (written as geta writes one)."""
    save_state(RunState(CompressOptions(**options)).to_checkpoint(), state_path(out))


def test_checkpoint_options_do_not_run_code(
    tmp_path: Path, geta_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "marker"
    _evil_module(tmp_path, marker)
    monkeypatch.chdir(tmp_path)
    _checkpoint(tmp_path / "a", model="evil:build")
    result = geta_cli("compress", "--out", tmp_path / "a", "--resume", "--quiet")
    assert result.code == 2 and "--model evil:build" in result.err
    _checkpoint(tmp_path / "b", model="mlp", data=f"cifar10:{_evil_cifar(tmp_path / 'cifar', marker)}")
    result = geta_cli("compress", "--out", tmp_path / "b", "--resume", "--quiet")
    assert result.code == 2 and "refused" in result.err
    assert not marker.exists()


def _flip(path: Path, at: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[at] ^= 0x01
    path.write_bytes(bytes(blob))


def _offset_of(path: Path, tensor: torch.Tensor) -> int:
    """Where ``tensor``'s bytes start in ``path`` (torch.save stores them uncompressed)."""
    return path.read_bytes().index(tensor.contiguous().view(torch.uint8).numpy().tobytes()[:64])


def test_a_flipped_byte_in_dense_pt_names_the_tensor(
    finished_run: Path, tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    run = _copy_run(finished_run, tmp_path)
    weight = torch.load(run / "dense.pt", weights_only=True)["3.weight"]
    _flip(run / "dense.pt", _offset_of(run / "dense.pt", weight) + 100)
    result = geta_cli("report", run)
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert "dense.pt is damaged: tensor '3.weight'" in result.err


def test_a_flipped_byte_in_model_geta_is_named(
    finished_run: Path, tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    run = _copy_run(finished_run, tmp_path)
    _flip(run / "model.geta", (run / "model.geta").stat().st_size - 50)  # in the tensor data
    (run / CHECKSUMS).unlink()  # the file's own checksums find it, not only checksums.json
    result = geta_cli("report", run)
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert "model.geta is damaged: tensor '" in result.err


def test_a_flipped_byte_in_state_pt_names_the_tensor(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    weight = torch.randn(256)
    state = RunState(CompressOptions(model="mlp"), model={"fc.weight": weight}).to_checkpoint()
    save_state(state, path)
    _flip(path, _offset_of(path, weight) + 8)
    with pytest.raises(CliError, match=r"state.pt is damaged: tensor 'model/fc.weight'"):
        load_state(path)


def test_an_edited_counter_in_state_pt_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    state = RunState(CompressOptions(model="mlp")).to_checkpoint()
    save_state(state, path)
    raw = torch.load(path, weights_only=True)
    raw["epoch"] = 5  # a value, not a tensor, changed after it was written
    torch.save(raw, path)
    with pytest.raises(CliError, match="non-tensor values"):
        load_state(path)


def test_a_genuine_cifar_folder_still_loads(tmp_path: Path) -> None:
    import numpy as np

    from geta.recipes.images import load_cifar10

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        pixels = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        batch = {b"batch_label": b"b", b"labels": [i % 10, (i + 1) % 10], b"data": pixels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    bundle = load_cifar10(str(tmp_path))
    assert tuple(bundle.x_train.shape) == (10, 3, 32, 32) and bundle.y_test.tolist() == [5, 6]


@pytest.mark.parametrize("name", ["config.yaml", "inputs.pt", "report.json"])
def test_a_changed_byte_in_any_file_the_report_reads_is_named(
    name: str, finished_run: Path, tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    run = _copy_run(finished_run, tmp_path)
    _flip(run / name, (run / name).stat().st_size - 2)
    result = geta_cli("report", run)
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert f"{name} is damaged: its bytes do not match the SHA-256 checksum recorded in checksums.json" in (
        result.err
    )


def test_a_run_of_your_own_factory_reports_when_you_name_it(
    tmp_path: Path, geta_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "trust_nets.py").write_text(
        "import torch\n\ndef net(num_classes):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),\n"
        "                               torch.nn.Linear(32, num_classes))\n"
    )
    monkeypatch.chdir(tmp_path)
    argv = [a if a != "mlp" else "trust_nets:net" for a in TINY]
    assert geta_cli("compress", "--out", tmp_path / "run", *argv).code == 0
    refused = geta_cli("report", tmp_path / "run")
    assert refused.code == 2 and "--model trust_nets:net" in refused.err
    named = geta_cli("report", tmp_path / "run", "--model", "trust_nets:net", "--json")
    assert named.code == 0, named.err
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert json.loads(named.out)["totals"]["relative_bops"] == pytest.approx(saved["relative_bops"])
    trusted = geta_cli("report", tmp_path / "run", "--trust-run-code")
    assert trusted.code == 0 and "warning: --trust-run-code: importing trust_nets:net" in trusted.err
