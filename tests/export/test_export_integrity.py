"""Integrity of what geta writes: a flipped byte, a truncated or oversized file is one clear error.

Covers the packed file (per-tensor and manifest SHA-256, sizes checked before allocation, old
version-1 files still load) and Hugging Face folders (per-tensor checksums of the safetensors,
an index whose shard names leave the folder, a config whose ``auto_map`` names code).
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import geta
from geta.errors import GetaError, IntegrityError
from geta.export import load_packed, packed
from geta.export.packfile import MAGIC


def _small() -> tuple[nn.Module, nn.Module]:
    """(a converted two-layer net, a fresh dense one of the same class)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(4, 8)
    plan = geta.prepare(model, (x,), geta.Config(weight_bits=(4, 8), act_bits=(4, 8)))
    small = geta.convert(model, plan).eval()
    return small, nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """(manifest, data) of a version-2 packed file."""
    _, _, length, _ = struct.unpack_from("<8sIQ32s", blob)
    start = struct.calcsize("<8sIQ32s")
    return json.loads(zlib.decompress(blob[start : start + length])), blob[start + length :]


def _join(manifest: dict[str, Any], data: bytes, version: int = 2) -> bytes:
    raw = zlib.compress(json.dumps(manifest).encode())
    if version == 1:
        return struct.pack("<8sIQ", MAGIC, 1, len(raw)) + raw + data
    return struct.pack("<8sIQ32s", MAGIC, 2, len(raw), hashlib.sha256(raw).digest()) + raw + data


@pytest.fixture
def file(tmp_path: Path) -> Path:
    small, _ = _small()
    path = tmp_path / "m.geta"
    packed(small, path)
    return path


def test_an_intact_file_loads_and_computes_the_same(file: Path) -> None:
    small, skeleton = _small()
    x = torch.randn(3, 8)
    assert torch.equal(load_packed(file, skeleton)(x), small(x))


def test_a_flipped_data_byte_names_the_tensor(file: Path) -> None:
    manifest, data = _split(file.read_bytes())
    entry = next(e for e in manifest["tensors"] if e["encoding"] == "codes")
    blob = bytearray(file.read_bytes())
    blob[len(blob) - len(data) + entry["offset"]] ^= 0x10
    file.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match=rf"m.geta is damaged: tensor '{entry['name']}'"):
        load_packed(file, _small()[1])


def test_a_flipped_manifest_byte_is_detected(file: Path) -> None:
    blob = bytearray(file.read_bytes())
    blob[struct.calcsize("<8sIQ32s") + 5] ^= 0x01
    file.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="manifest does not match its SHA-256"):
        load_packed(file, _small()[1])


@pytest.mark.parametrize("change", ["truncated", "oversized"])
def test_a_truncated_or_oversized_file_is_refused(file: Path, change: str) -> None:
    blob = file.read_bytes()
    file.write_bytes(blob[:-7] if change == "truncated" else blob + b"\0" * 7)
    with pytest.raises(IntegrityError, match="truncated or damaged"):
        load_packed(file, _small()[1])


def test_a_huge_shape_is_refused_before_allocating(file: Path) -> None:
    manifest, data = _split(file.read_bytes())
    entry = next(e for e in manifest["tensors"] if e["encoding"] == "raw")
    entry["shape"] = [200_000, 200_000]  # 160 GB of float32, if anyone allocated it
    file.write_bytes(_join(manifest, data))  # a consistent header: only the sizes give it away
    with pytest.raises(IntegrityError, match="does not fit its shape or the file"):
        load_packed(file, _small()[1])


def test_a_version_1_file_without_checksums_still_loads(file: Path) -> None:
    manifest, data = _split(file.read_bytes())
    manifest["version"] = 1
    for e in manifest["tensors"]:
        e.pop("sha256", None)
    file.write_bytes(_join(manifest, data, version=1))
    small, skeleton = _small()
    x = torch.randn(3, 8)
    assert torch.equal(load_packed(file, skeleton)(x), small(x))


def test_a_future_version_is_refused_clearly(file: Path) -> None:
    blob = bytearray(file.read_bytes())
    blob[8:12] = struct.pack("<I", 9)
    file.write_bytes(bytes(blob))
    with pytest.raises(GetaError, match="version 9; this geta reads 1 and 2"):
        load_packed(file, _small()[1])


# -- Hugging Face folders ----------------------------------------------------------------------------


@pytest.fixture
def hf_folder(tmp_path: Path) -> Path:
    pytest.importorskip("transformers")
    from geta.testing import zoo

    model, inputs = zoo.build("hf_llama")
    plan = geta.prepare(model, inputs, geta.Config(weight_bits=(4, 8), act_bits=(4, 8)))
    small = geta.convert(model, plan)
    folder = tmp_path / "hf"
    geta.export.pretrained(small, folder)
    return folder


def test_a_flipped_safetensors_byte_names_the_tensor(hf_folder: Path) -> None:
    from safetensors.torch import load_file

    path = hf_folder / "model.safetensors"
    name, tensor = next((n, t) for n, t in load_file(path).items() if t.numel() >= 64)
    blob = bytearray(path.read_bytes())
    at = blob.index(tensor.contiguous().view(torch.uint8).numpy().tobytes()[:32]) + 4
    blob[at] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match=rf"model.safetensors is damaged: tensor '{name}'"):
        geta.export.load_pretrained(hf_folder)


def test_an_index_that_leaves_the_folder_is_refused(hf_folder: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    outside = tmp_path / "outside.safetensors"
    save_file(load_file(hf_folder / "model.safetensors"), outside)
    (hf_folder / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "../outside.safetensors"}}
    (hf_folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (hf_folder / "geta-checksums.json").unlink()  # an attacker rewrites the checksums too
    with pytest.raises(IntegrityError, match="outside"):
        geta.export.load_pretrained(hf_folder)


def test_remote_code_of_a_folder_never_runs(
    hf_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "marker"
    (hf_folder / "evil_config.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil-geta'\n"
    )
    config = json.loads((hf_folder / "config.json").read_text())
    config.update(model_type="evil-geta", auto_map={"AutoConfig": "evil_config.EvilConfig"})
    (hf_folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr("builtins.input", lambda *_: "yes")  # `yes | ...`: a prompt would say yes
    with pytest.raises(GetaError, match="custom code"):
        geta.export.load_pretrained(hf_folder)
    from geta.recipes.errors import RecipeError
    from geta.recipes.hf import open_checkpoint

    with pytest.raises(RecipeError, match="custom code"):
        open_checkpoint(str(hf_folder))
    assert not marker.exists()
