"""The bad-input audit as a test matrix: every case is one clean line, before any work, losing nothing.

"Clean" means: the CLI exits with status 2 and prints exactly one error line (warnings aside)
that names the flag, key or field at fault, with no traceback; an API call raises a
`geta.GetaError` whose one-line message names the file and the field. Files the command was
pointed at (a checkpoint, a report) are left byte for byte as they were. No case trains: any
training step fails the test (`_no_training`), so each check provably comes before the work.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import geta
import geta.cli.job
from geta.cli.checkpoint import atomic_save, state_path
from geta.cli.options import CompressOptions
from geta.cli.runstate import RunState
from geta.errors import GetaError
from geta.export import load_packed, packed
from geta.export.packformat import FORMAT_VERSION, HEADER, MAGIC

from .conftest import TINY, Result

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def train_epoch(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started before the input was checked")

    monkeypatch.setattr(geta.cli.job, "train_epoch", train_epoch)


def _clean(result: Result, *names: str) -> str:
    """Assert one clean error line naming each of ``names``; return it."""
    lines = [line for line in result.err.splitlines() if line.strip() and ": warning: " not in line]
    assert result.code == 2, result.err
    assert len(lines) == 1 and lines[0].startswith("geta compress: error: "), result.err
    assert "Traceback" not in result.err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# -- 1. flags -----------------------------------------------------------------------------------------

FLAGS: list[tuple[list[str], str]] = [
    (["--sparsity", "-0.1"], "--sparsity"),
    (["--sparsity", "1.5"], "--sparsity"),
    (["--sparsity", "abc"], "--sparsity"),
    (["--sparsity", "nan"], "--sparsity"),
    (["--weight-bits", "4"], "--weight-bits"),
    (["--weight-bits", "1,40"], "--weight-bits"),
    (["--weight-bits", "8,4"], "--weight-bits"),
    (["--weight-bits", "a,b"], "--weight-bits"),
    (["--act-bits", "0,4"], "--act-bits"),
    (["--act-bits", "x"], "--act-bits"),
    (["--epochs", "-1"], "--epochs"),
    (["--epochs", "1.5"], "--epochs"),
    (["--warmup", "-1"], "--warmup"),
    (["--joint", "0"], "--joint"),
    (["--epochs", "2", "--joint", "3"], "--epochs"),
    (["--dense-epochs", "-2"], "--dense-epochs"),
    (["--dense-lr", "-1"], "--dense-lr"),
    (["--dense-lr", "nan"], "--dense-lr"),
    (["--dense-lr", "inf"], "--dense-lr"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr-quant", "-1"], "--lr-quant"),
    (["--momentum", "1.5"], "--momentum"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--clip-norm", "-1"], "--clip-norm"),
    (["--grad-clip", "0"], "--grad-clip"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "1.5"], "--batch-size"),
    (["--device", "tpu9"], "--device"),
    (["--seed", "-1"], "--seed"),
    (["--target-bops", "0"], "--target-bops"),
    (["--target-bops", "2"], "--target-bops"),
    (["--target-bops", "inf"], "--target-bops"),
    (["--target-bops", "1e-7"], "--target-bops"),  # in range, but no model is that cheap
    (["--selection", "foo"], "--selection"),
    (["--min-keep", "2"], "--min-keep"),
    (["--forget", "x"], "--forget"),
    (["--bit-rule", "x"], "--bit-rule"),
    (["--distill", "-1"], "--distill"),
    (["--optimizer", "lbfgs"], "--optimizer"),
    (["--uniform-layers", "--selection", "global"], "--selection"),
    (["--model", "nosuch"], "nosuch"),
    (["--model", "no_such_module:factory"], "no_such_module"),
    (["--data", "nosuch"], "nosuch"),
    (["--data", "cifar10"], "cifar10:DIR"),
    (["--data", "cifar10:/no/such/dir"], "/no/such/dir"),
    (["--data", "digits:/x"], "digits"),
    (["--seq-len", "1"], "--seq-len"),
    (["--dense-checkpoint", "/no/such/dense.pt"], "--dense-checkpoint"),
    (["--resume"], "--resume"),
    (["--model", "hf:/no/such/model"], "/no/such/model"),
    (["--data", "text:/no/such/file.txt"], "/no/such/file.txt"),
    (["--data", "jsonl:/no/such/file.jsonl"], "/no/such/file.jsonl"),
    (["--data", "imagefolder:/no/such/dir"], "/no/such/dir"),
    (["--seq-len", "x"], "--seq-len"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "cuda:99x"], "--device"),
]


@pytest.mark.parametrize("extra", [c[0] for c in FLAGS], ids=[" ".join(c[0]) for c in FLAGS])
def test_bad_flag(extra: list[str], tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    name = dict((tuple(c[0]), c[1]) for c in FLAGS)[tuple(extra)]
    out = tmp_path / "run"
    _clean(geta_cli("compress", "--out", out, *TINY, *extra), name)
    assert not state_path(out).exists()


def test_bad_dense_checkpoint_file(tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    junk = tmp_path / "dense.pt"
    junk.write_bytes(b"not a state dict")
    _clean(
        geta_cli("compress", "--out", tmp_path / "run", *TINY, "--dense-checkpoint", junk),
        "--dense-checkpoint",
    )


def _bad_out(kind: str, d: Path) -> Path:
    """An --out of the given kind under ``d``."""
    (d / "f").write_text("x")
    (d / "mine").mkdir()
    (d / "mine" / "notes.txt").write_text("x")
    places = {"a file": d / "f", "under a file": d / "f" / "out", "foreign folder": d / "mine"}
    return places.get(kind, Path("/proc/geta-no-such-dir/out"))


def test_dense_checkpoint_of_another_model(tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    other = tmp_path / "dense.pt"
    torch.save({"w": torch.zeros(2)}, other)
    line = _clean(geta_cli("compress", "--out", tmp_path / "run", *TINY, "--dense-checkpoint", other))
    assert "--dense-checkpoint" in line and "not a state_dict of this model" in line


OUTS = ["a file", "under a file", "unwritable", "foreign folder"]


@pytest.mark.parametrize("kind", OUTS)
def test_bad_out(kind: str, tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    out = _bad_out(kind, tmp_path)
    _clean(geta_cli("compress", "--out", out, *TINY), f"--out {out}")


# -- 2. config files ----------------------------------------------------------------------------------

CONFIGS: list[tuple[str, str, str]] = [
    ("missing.yaml", "", "missing.yaml"),
    ("bad.yaml", "sparsity: [1, 2\n", "not valid YAML"),
    ("list.yaml", "- 1\n- 2\n", "mapping"),
    ("unknown.yaml", "sparsty: 0.5\n", "did you mean 'sparsity'"),
    ("range.yaml", "sparsity: 2\n", "'sparsity' in"),
    ("type.yaml", "batch_size: [1]\n", "'batch_size' in"),
    ("bits.yaml", "weight_bits: [9, 2, 3]\n", "'weight_bits' in"),
    ("bool.yaml", "uniform_layers: maybe\n", "'uniform_layers' in"),
    ("bad.toml", "sparsity = \n", "not valid TOML"),
    ("nan.toml", "lr = nan\n", "'lr' in"),
]


@pytest.mark.parametrize("name,text,expect", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_bad_config(
    name: str, text: str, expect: str, tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    file = tmp_path / name
    if name != "missing.yaml":
        file.write_text(text)
    _clean(geta_cli("compress", "--out", tmp_path / "run", *TINY, "--config", file), expect)
    assert name == "missing.yaml" or file.read_text() == text


# -- 3. checkpoint fields -----------------------------------------------------------------------------


def _checkpoint() -> dict[str, Any]:
    """A fresh run's state as TINY would save it before its first epoch."""
    return RunState(CompressOptions(model="mlp", dense_epochs=1, epochs=2)).to_checkpoint()


def _tensor_dict(names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {n: torch.zeros(2) for n in names}


STATE_EDITS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "not a dict": (lambda s: [1, 2], "not a geta compress checkpoint"),
    "no history": (lambda s: s.pop("history"), "not a geta compress checkpoint"),
    "no dense key": (lambda s: s.pop("dense"), "'dense' is missing"),
    "format 99": (lambda s: s.update(format=99), "format 99"),
    "options a string": (lambda s: s.update(options="x"), "'options'"),
    "options unknown key": (lambda s: s["options"].update(bogus=1), "'bogus'"),
    "options bad sparsity": (lambda s: s["options"].update(sparsity=5), "'sparsity'"),
    "options bad bits": (lambda s: s["options"].update(weight_bits="x"), "'weight_bits'"),
    "phase foo": (lambda s: s.update(phase="foo"), "'phase'"),
    "epoch -1": (lambda s: s.update(epoch=-1), "'epoch'"),
    "epoch text": (lambda s: s.update(epoch="x"), "'epoch'"),
    "epoch beyond the phase": (lambda s: s.update(epoch=99), "'epoch'"),
    "batch -1": (lambda s: s.update(batch=-1), "'batch'"),
    "batch beyond an epoch": (lambda s: s.update(batch=10**6), "'batch'"),
    "partial a string": (lambda s: s.update(partial="x"), "'partial'"),
    "partial unknown keys": (lambda s: s.update(partial={"bogus": 1}), "'partial'"),
    "partial nan": (lambda s: s.update(partial={"loss_sum": float("nan")}), "'partial'"),
    "history a string": (lambda s: s.update(history="x"), "'history'"),
    "history of numbers": (lambda s: s.update(history=[1, 2]), "'history'"),
    "history record of another phase": (
        lambda s: s.update(history=[{"phase": "x", "epoch": 0}]),
        "'history'",
    ),
    "history record with text": (
        lambda s: s.update(history=[{"phase": "dense", "epoch": 0, "loss": "x"}]),
        "'history'",
    ),
    "dense a string": (lambda s: s.update(dense="x"), "'dense'"),
    "compress without dense": (lambda s: s.update(phase="compress"), "'dense'"),
    "dense of another model": (
        lambda s: s.update(
            phase="compress", dense={"state": _tensor_dict(("w",)), "accuracy": 0.5, "loss": 1.0}
        ),
        "'dense'",
    ),
    "model a number": (lambda s: s.update(model=5), "'model'"),
    "model of another model": (lambda s: s.update(model=_tensor_dict(("w",)), optimizer={}), "'model'"),
    "optimizer a list": (lambda s: s.update(optimizer=[1]), "'optimizer'"),
    "rng a string": (lambda s: s.update(rng="x"), "'rng'"),
    "rng without torch": (lambda s: s.update(rng={"python": []}), "'rng'"),
    "rng garbage": (lambda s: s.update(rng={"torch": torch.zeros(3), "python": [1]}), "'rng'"),
    "seconds -1": (lambda s: s.update(seconds=-1.0), "'seconds'"),
    "seconds nan": (lambda s: s.update(seconds=float("nan")), "'seconds'"),
    "wall_seconds text": (lambda s: s.update(wall_seconds="x"), "'wall_seconds'"),
}


@pytest.mark.parametrize("edit", list(STATE_EDITS))
def test_bad_checkpoint_field(edit: str, tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    change, expect = STATE_EDITS[edit]
    state = _checkpoint()
    replaced = change(state)
    out = tmp_path / "run"
    atomic_save(replaced if isinstance(replaced, list) else state, state_path(out))
    before = state_path(out).read_bytes()
    _clean(geta_cli("compress", "--out", out, *TINY, "--resume"), expect)
    assert state_path(out).read_bytes() == before


def test_overwrite_refused_for_bad_input_keeps_the_interrupted_run(
    tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    out = tmp_path / "run"
    atomic_save(_checkpoint(), state_path(out))
    before = state_path(out).read_bytes()
    _clean(geta_cli("compress", "--out", out, *TINY, "--overwrite", "--target-bops", "1e-7"), "--target-bops")
    assert state_path(out).read_bytes() == before  # still resumable


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_damaged_checkpoint_file(damage: str, tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    out = tmp_path / "run"
    atomic_save(_checkpoint(), state_path(out))
    good = state_path(out).read_bytes()
    bad = {"garbage": b"\x00garbage" * 10, "truncated": good[: len(good) // 2], "empty": b""}[damage]
    state_path(out).write_bytes(bad)
    _clean(geta_cli("compress", "--out", out, *TINY, "--resume"), str(state_path(out)))
    assert state_path(out).read_bytes() == bad


# -- 4. report.json of a finished run -----------------------------------------------------------------

REPORTS: dict[str, tuple[str, list[str], str]] = {
    "garbage": ("{not json", [], "not a geta report"),
    "a list": ("[1, 2]", [], "not a geta report"),
    "no options": ('{"dense": {}}', [], "not a geta report"),
    "options a string": ('{"options": "x"}', [], "not a geta report"),
    "options bad value": ('{"options": {"sparsity": "x"}}', [], "'sparsity'"),
    "options unknown key": ('{"options": {"bogus": 1}}', [], "'bogus'"),
    "another sparsity asked": ("", ["--sparsity", "0.3"], "--sparsity none -> 0.3"),
    "another seed asked": ("", ["--seed", "3"], "--seed 0 -> 3"),
}


@pytest.mark.parametrize("case", list(REPORTS))
def test_bad_finished_report(case: str, tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    text, extra, expect = REPORTS[case]
    out = tmp_path / "run"
    out.mkdir()
    options = CompressOptions(model="mlp", dense_epochs=1, epochs=2).to_dict()
    (out / "report.json").write_text(text or json.dumps({"options": options}))
    before = (out / "report.json").read_bytes()
    line = _clean(geta_cli("compress", "--out", out, *TINY, "--resume", *extra), expect)
    assert "already complete" not in line and (out / "report.json").read_bytes() == before


# -- 5. data ------------------------------------------------------------------------------------------


def _cifar(folder: Path, pixels: Any, labels: Any) -> Path:
    import pickle

    import numpy as np

    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.asarray(pixels), b"labels": list(labels)}
        (folder / name).write_bytes(pickle.dumps(batch))
    return folder


DATA: dict[str, tuple[Any, Any, str]] = {
    "nan pixels": ([[float("nan")] * 3072] * 2, [0, 1], "'data'"),
    "pixels of 300": ([[300] * 3072] * 2, [0, 1], "'data'"),
    "negative pixels": ([[-1] * 3072] * 2, [0, 1], "'data'"),
    "fractional pixels": ([[0.5] * 3072] * 2, [0, 1], "'data'"),
    "short images": ([[0] * 100] * 2, [0, 1], "'data'"),
    "label 10": ([[0] * 3072] * 2, [0, 10], "'labels'"),
    "label -1": ([[0] * 3072] * 2, [0, -1], "'labels'"),
    "labels disagree": ([[0] * 3072] * 2, [0], "labels"),
}


@pytest.mark.parametrize("case", list(DATA))
def test_bad_cifar_data(case: str, tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    pixels, labels, expect = DATA[case]
    folder = _cifar(tmp_path / "cifar", pixels, labels)
    argv = ["compress", "--out", tmp_path / "run", *TINY, "--model", "resnet", "--data", f"cifar10:{folder}"]
    _clean(geta_cli(*argv), str(folder), expect)


# -- 6. load_packed -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def packed_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    from geta.testing import zoo

    model, x = zoo.build("mlp")
    plan = geta.prepare(model, x, geta.Config(weight_bits=(2, 8), act_bits=None))
    small = geta.convert(model, plan)
    path = tmp_path_factory.mktemp("packed") / "model.geta"
    packed(small, path)
    return path, small


def _parts(path: Path) -> tuple[dict[str, Any], bytes]:
    blob = path.read_bytes()
    _, _, length, _ = HEADER.unpack_from(blob)
    manifest = json.loads(zlib.decompress(blob[HEADER.size : HEADER.size + length]))
    return manifest, blob[HEADER.size + length :]


def _file(manifest: Any, data: bytes, *, magic: bytes = MAGIC, version: int = FORMAT_VERSION) -> bytes:
    raw = zlib.compress(json.dumps(manifest).encode())
    return HEADER.pack(magic, version, len(raw), hashlib.sha256(raw).digest()) + raw + data


def _entry(manifest: dict[str, Any], encoding: str) -> dict[str, Any]:
    return next(e for e in manifest["tensors"] if e["encoding"] == encoding)


PACKED: dict[str, Callable[[dict[str, Any], bytes, bytes], bytes | None]] = {
    "empty file": lambda m, d, b: b"",
    "ten bytes": lambda m, d, b: b[:10],
    "wrong magic": lambda m, d, b: b"NOTGETA!" + b[8:],
    "wrong version": lambda m, d, b: _file(m, d, version=FORMAT_VERSION + 1),
    "version 0": lambda m, d, b: _file(m, d, version=0),
    "huge manifest length": lambda m, d, b: (
        HEADER.pack(MAGIC, FORMAT_VERSION, 2**40, bytes(32)) + b[HEADER.size :]
    ),
    "manifest not zlib": lambda m, d, b: (
        HEADER.pack(MAGIC, FORMAT_VERSION, 4, hashlib.sha256(b"abcd").digest()) + b"abcd" + d
    ),
    "manifest not json": lambda m, d, b: (
        lambda r: HEADER.pack(MAGIC, FORMAT_VERSION, len(r), hashlib.sha256(r).digest()) + r + d
    )(zlib.compress(b"{oops")),
    "manifest a list": lambda m, d, b: _file([1, 2], d),
    "no tensors": lambda m, d, b: _file({**m, "tensors": None}, d),
    "truncated data": lambda m, d, b: b[:-7],
    "truncated to the header": lambda m, d, b: b[: len(b) - len(d)],
    "entry without name": lambda m, d, b: (m["tensors"][0].pop("name"), _file(m, d))[1],
    "unknown encoding": lambda m, d, b: (_entry(m, "raw").update(encoding="zip"), _file(m, d))[1],
    "huge raw shape": lambda m, d, b: (_entry(m, "raw").update(shape=[10**6, 10**6]), _file(m, d))[1],
    "huge codes shape": lambda m, d, b: (_entry(m, "codes").update(shape=[10**7, 10**6]), _file(m, d))[1],
    "negative shape": lambda m, d, b: (_entry(m, "raw").update(shape=[-1]), _file(m, d))[1],
    "negative offset": lambda m, d, b: (_entry(m, "raw").update(offset=-5), _file(m, d))[1],
    "offset past the end": lambda m, d, b: (_entry(m, "raw").update(offset=len(d)), _file(m, d))[1],
    "unknown dtype": lambda m, d, b: (_entry(m, "raw").update(dtype="float99"), _file(m, d))[1],
    "dtype not a dtype": lambda m, d, b: (_entry(m, "raw").update(dtype="nn"), _file(m, d))[1],
    "bits 0": lambda m, d, b: (_entry(m, "codes").update(bits=0), _file(m, d))[1],
    "bits 99": lambda m, d, b: (_entry(m, "codes").update(bits=99), _file(m, d))[1],
    "code_min text": lambda m, d, b: (_entry(m, "codes").update(code_min="x"), _file(m, d))[1],
    "alias of nothing": lambda m, d, b: (
        m["tensors"].append({"name": "x", "encoding": "alias", "of": "y"}),
        _file(m, d),
    )[1],
    "structure a string": lambda m, d, b: _file({**m, "structure": "x"}, d),
    "structure of garbage": lambda m, d, b: _file({**m, "structure": {"quantizers": [1], "sizes": 5}}, d),
    "a folder": lambda m, d, b: None,
    "missing": lambda m, d, b: None,
}


def test_packed_manifest_that_inflates_without_end(
    packed_file: tuple[Path, torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import geta.export.packformat as packformat

    monkeypatch.setattr(packformat, "MAX_MANIFEST_BYTES", 1 << 16)
    bomb = zlib.compress(b" " * (1 << 20))  # 1 MiB of spaces in 1 kB
    path = tmp_path / "bomb.geta"
    path.write_bytes(HEADER.pack(MAGIC, FORMAT_VERSION, len(bomb), hashlib.sha256(bomb).digest()) + bomb)
    with pytest.raises(GetaError, match="inflates past") as info:
        load_packed(path, packed_file[1])
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("case", list(PACKED))
def test_bad_packed_file(case: str, packed_file: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    import copy

    good, small = packed_file
    manifest, data = _parts(good)
    path = tmp_path / "bad.geta"
    content = PACKED[case](manifest, data, good.read_bytes())
    if case == "a folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(GetaError) as info:
        load_packed(path, copy.deepcopy(small))
    message = str(info.value)
    assert "\n" not in message and str(path) in message


def test_packed_file_of_another_model(packed_file: tuple[Path, torch.nn.Module]) -> None:
    with pytest.raises(GetaError, match="Sequential") as info:
        load_packed(packed_file[0], torch.nn.Sequential(torch.nn.Linear(3, 2)))
    assert "\n" not in str(info.value)


# -- 7. load_pretrained -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from geta.export import pretrained
    from geta.testing import zoo

    model, x = zoo.build("hf_llama")
    plan = geta.prepare(model, x, geta.Config(weight_bits=(4, 8), act_bits=(4, 8)))
    folder = tmp_path_factory.mktemp("hf") / "model"
    pretrained(geta.convert(model, plan), folder)
    return folder


def _edit_json(file: Path, change: Callable[[Any], Any]) -> None:
    data = json.loads(file.read_text())
    new = change(data)
    file.write_text(json.dumps(data if new is None else new))


def _edit_tensors(file: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(file)
    change(state)
    save_file(state, file, metadata={"format": "pt"})


def _first_weight(state: dict[str, torch.Tensor]) -> str:
    return next(k for k, v in state.items() if v.dim() == 2)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda config: config.update({key: value})


def _break_folder(case: str, d: Path) -> Path:
    """Damage the copy ``d`` of a save_pretrained folder as ``case`` says; return what to load."""
    config, weights = d / "config.json", d / "model.safetensors"
    edits: dict[str, Callable[[dict[str, Any]], Any]] = {
        "no geta field": lambda c: c.pop("geta"),
        "geta format 99": lambda c: c["geta"].update(format=99),
        "unknown architecture": _set("architectures", ["Nope"]),
        "unknown model_type": _set("model_type", "nope"),
        "hidden size changed": _set("hidden_size", 12),
    }
    tensor_edits: dict[str, Callable[[dict[str, torch.Tensor]], Any]] = {
        "a tensor missing": lambda s: s.pop(_first_weight(s)),
        "an extra tensor": lambda s: s.update(bogus=torch.zeros(1)),
        "a tensor of another shape": lambda s: s.update({_first_weight(s): torch.zeros(3, 3)}),
    }
    if case in edits:
        _edit_json(config, edits[case])
    elif case in tensor_edits:
        _edit_tensors(weights, tensor_edits[case])
    elif case == "missing":
        return d / "nothing"
    elif case == "a file":
        return config
    elif case == "empty folder":
        for p in d.iterdir():
            p.unlink()
    elif case in ("config garbage", "config a list"):
        config.write_text("{oops" if case == "config garbage" else "[1]")
    elif case == "no weights":
        weights.unlink()
    elif case == "weights garbage":
        weights.write_bytes(b"\x00" * 64)
    elif case == "weights truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif case == "index garbage":
        weights.unlink()
        (d / "model.safetensors.index.json").write_text("{")
    return d


PRETRAINED = [
    "missing", "a file", "empty folder", "config garbage", "config a list", "no geta field",
    "geta format 99", "unknown architecture", "unknown model_type", "hidden size changed", "no weights",
    "weights garbage", "weights truncated", "a tensor missing", "an extra tensor",
    "a tensor of another shape", "index garbage",
]  # fmt: skip


@pytest.mark.parametrize("case", PRETRAINED)
def test_bad_pretrained_folder(case: str, pretrained_folder: Path, tmp_path: Path) -> None:
    import shutil

    from geta.export import load_pretrained

    folder = tmp_path / "model"
    shutil.copytree(pretrained_folder, folder)
    path = _break_folder(case, folder)
    with pytest.raises(GetaError) as info:
        load_pretrained(path)
    message = str(info.value)
    assert "\n" not in message and str(folder) in message
