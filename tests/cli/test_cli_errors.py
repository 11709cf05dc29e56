"""Bad input: one clear sentence naming the problem and the fix, exit status 2, no traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import TINY, Result


def _setup_file(tmp: Path) -> Path:
    path = tmp / "a_file"
    path.write_text("x")
    return path


def _setup_corrupt_checkpoint(tmp: Path) -> Path:
    out = tmp / "run"
    (out / ".checkpoint").mkdir(parents=True)
    (out / ".checkpoint" / "state.pt").write_bytes(b"\x00garbage")
    return out


def _setup_bad_cifar(tmp: Path) -> Path:
    (tmp / "cifar").mkdir()
    (tmp / "cifar" / "data_batch_1").write_bytes(b"")
    return tmp / "cifar"


def _setup_bad_config(tmp: Path) -> Path:
    path = tmp / "bad.yaml"
    path.write_text("sparsity: [0.5\n")
    return path


def _setup_pickled_module(tmp: Path) -> Path:
    import torch

    path = tmp / "compressed.pt"  # a whole module, as geta compress writes compressed.pt
    torch.save(torch.nn.Linear(2, 2), path)
    return path


def _setup_foreign_state_dict(tmp: Path) -> Path:
    import torch

    path = tmp / "other.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    return path


def _setup_user_dir(tmp: Path) -> Path:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "thesis.tex").write_text("keep me")
    return tmp / "mine"


# (case id, argv builder from tmp_path, expected fragment of the message)
CASES: list[tuple[str, Callable[[Path], list[object]], str]] = [
    (
        "missing data dir",
        lambda t: ["compress", "--out", t / "o", "--data", f"cifar10:{t / 'nope'}"],
        "does not exist; pass --data cifar10:DIR",
    ),
    (
        "malformed data dir",
        lambda t: ["compress", "--out", t / "o", "--data", f"cifar10:{_setup_bad_cifar(t)}"],
        "lacks data_batch_2",
    ),
    (
        "unknown data set",
        lambda t: ["compress", "--out", t / "o", "--data", "mnist"],
        "unknown data set 'mnist'",
    ),
    (
        "factory does not import",
        lambda t: ["compress", "--out", t / "o", "--model", "no_such_mod_q:build"],
        "module 'no_such_mod_q' could not be imported",
    ),
    (
        "unknown recipe",
        lambda t: ["compress", "--out", t / "o", "--model", "resnet50"],
        "unknown model 'resnet50'; use one of resnet, vgg, mlp, vit, llama",
    ),
    (
        "impossible bits",
        lambda t: ["compress", "--out", t / "o", "--weight-bits", "8,4"],
        "--weight-bits 8,4: LO must not exceed HI; pass 4,8",
    ),
    (
        "bits out of range",
        lambda t: ["compress", "--out", t / "o", "--act-bits", "4,32"],
        "bit widths must lie in [2, 16]",
    ),
    ("out is a file", lambda t: ["compress", "--out", _setup_file(t)], "is a file; pass a directory path"),
    (
        "out holds user files",
        lambda t: ["compress", "--out", _setup_user_dir(t)],
        "non-empty directory that holds no geta run",
    ),
    (
        "corrupt checkpoint",
        lambda t: ["compress", "--out", _setup_corrupt_checkpoint(t), "--resume"],
        "is corrupt or not a geta checkpoint",
    ),
    ("nothing to resume", lambda t: ["compress", "--out", t / "o", "--resume"], "no checkpoint to resume"),
    (
        "bad config file",
        lambda t: ["compress", "--out", t / "o", "--config", _setup_bad_config(t)],
        "is not valid YAML",
    ),
    (
        "missing config file",
        lambda t: ["compress", "--out", t / "o", "--config", t / "none.yaml"],
        "config file",
    ),
    (
        "missing dense checkpoint",
        lambda t: ["compress", "--out", t / "o", "--dense-checkpoint", t / "d.pt", *TINY],
        "--dense-checkpoint",
    ),
    (
        "corrupt dense checkpoint",
        lambda t: ["compress", "--out", t / "o", "--dense-checkpoint", _setup_file(t), *TINY],
        "is not a state_dict file (corrupt, or a pickled object",
    ),
    (
        "module as dense checkpoint",
        lambda t: ["compress", "--out", t / "o", "--dense-checkpoint", _setup_pickled_module(t), *TINY],
        "compressed.pt is not a state_dict file",
    ),
    (
        "dense checkpoint of another model",
        lambda t: ["compress", "--out", t / "o", "--dense-checkpoint", _setup_foreign_state_dict(t), *TINY],
        "is not a state_dict of this model (missing: 1.weight, 1.bias, 3.weight, ... (6 in all); "
        "unexpected: weight, bias)",
    ),
    ("report of a missing file", lambda t: ["report", t / "nope.pt"], "does not exist"),
    ("report of a corrupt file", lambda t: ["report", _setup_file(t)], "unpickling runs whatever code"),
    (
        "export into a missing dir",
        lambda t: ["export", _setup_file(t), "--format", "packed", "--out", t / "no" / "m.geta"],
        "does not exist; create it first",
    ),
    (
        "inspect bad graph suffix",
        lambda t: ["inspect", "--model", "mlp", "--graph", t / "g.jpg"],
        "the file must end in .svg, .html, .htm, .png, .dot, .gv",
    ),
    ("inspect bad model", lambda t: ["inspect", "--model", "nope"], "unknown model 'nope'"),
]


@pytest.mark.parametrize(("case", "argv", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_clear_line(
    case: str,
    argv: Callable[[Path], list[object]],
    message: str,
    tmp_path: Path,
    geta_cli: Callable[..., Result],
) -> None:
    result = geta_cli(*argv(tmp_path))
    assert result.code == 2, result.err
    assert message in result.err
    assert "Traceback" not in result.err and "\x1b" not in result.err  # no terminal escapes either
    assert result.err.startswith("geta ") and result.err.count("\n") == 1


def test_unavailable_device(tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = geta_cli("compress", "--out", tmp_path / "o", "--device", "cuda")
    assert result.code == 2 and "has no cuda device available; pass --device cpu" in result.err


def test_user_files_are_left_alone(tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    out = _setup_user_dir(tmp_path)
    assert geta_cli("compress", "--out", out).code == 2
    assert (out / "thesis.tex").read_text() == "keep me"


def test_argparse_errors_exit_2(geta_cli: Callable[..., Result]) -> None:
    assert geta_cli("compress").code == 2  # --out is required
    assert geta_cli("export", "x", "--format", "tflite", "--out", "y").code == 2
    assert geta_cli().code == 2


def test_messages_are_one_clean_line() -> None:
    from geta.cli.main import one_line

    assert one_line("load failed.\n\x1b[1mdo this\x1b[0m first\n\n  then that") == (
        "load failed.; do this first; then that"
    )
