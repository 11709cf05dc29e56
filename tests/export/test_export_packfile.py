"""Packed files: bit packing, the size bound, exact round trips, atomic writes."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations

import geta
from geta.errors import GetaError
from geta.export import load_packed, packed, read_manifest
from geta.export.bitpack import pack_bits, packed_nbytes, unpack_bits
from geta.testing import max_relative_error, model_outputs, zero_random_groups, zoo


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 32), n=st.integers(0, 300), seed=st.integers(0, 2**16))
def test_bit_packing_round_trips_in_exactly_ceil_n_bits_over_8_bytes(bits: int, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 2**bits, (n,), generator=gen, dtype=torch.int64)
    data = pack_bits(values, bits)
    assert data.dtype == torch.uint8 and data.numel() == packed_nbytes(n, bits) == -(-n * bits // 8)
    assert torch.equal(unpack_bits(data, bits, n), values)


def test_bit_packing_rejects_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="values must lie in"):
        pack_bits(torch.tensor([0, 8]), 3)
    with pytest.raises(ValueError, match="bits"):
        pack_bits(torch.tensor([0]), 0)


def _compressed(
    name: str, bits: int, *, exponent: float = 1.0, acts: bool = True
) -> tuple[nn.Module, object]:
    model, x = zoo.build(name)
    plan = geta.prepare(model, x, geta.Config(weight_bits=(2, 8), act_bits=(2, 8) if acts else None))
    zero_random_groups(plan, 0.5, seed=0)
    with torch.no_grad():
        for q in plan.quantizers.values():
            q.exponent.fill_(exponent)
            q.set_bits(bits)
    return geta.convert(model, plan), x


def _scrambled(model: nn.Module) -> nn.Module:
    """A skeleton of the same structure whose tensors all differ from the model's."""
    skeleton = copy.deepcopy(model)
    with torch.no_grad():
        for t in skeleton.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand_like(t) + 0.5)
    return skeleton


def test_packed_file_size_is_close_to_the_ideal(tmp_path: Path) -> None:
    model, _ = _compressed("vgg", 4)
    info = packed(model, tmp_path / "m.geta")
    originals = [
        m.parametrizations[a].original for m in model.modules() for a in geta.quant.weight_quantizers(m)
    ]
    skip = {id(t) for t in originals}
    rest = {id(t): t for t in model.state_dict(keep_vars=True).values() if id(t) not in skip}
    ideal = sum(t.numel() * 4 for t in originals) / 8 + sum(
        t.numel() * t.element_size() for t in rest.values()
    )
    assert info.ideal_bytes == pytest.approx(ideal)
    size = os.path.getsize(tmp_path / "m.geta")
    assert size == info.file_bytes
    assert size <= 1.25 * ideal + info.manifest_bytes + 32
    assert info.data_bytes <= ideal + len(originals)  # at most one padding byte per packed tensor
    manifest = read_manifest(tmp_path / "m.geta")
    codes = [e for e in manifest["tensors"] if e["encoding"] == "codes"]
    assert len(codes) == len(originals) and {e["bits"] for e in codes} == {4}


@pytest.mark.parametrize(
    ("name", "bits", "exponent"), [("resnet", 4, 1.0), ("mlp", 3, 0.8), ("mha", 8, 1.25)]
)
def test_round_trip_restores_identical_outputs(tmp_path: Path, name: str, bits: int, exponent: float) -> None:
    model, x = _compressed(name, bits, exponent=exponent)
    packed(model, tmp_path / "m.geta")
    skeleton = _scrambled(model)
    restored = load_packed(tmp_path / "m.geta", skeleton)
    assert restored is skeleton
    assert torch.equal(model_outputs(restored, x), model_outputs(model, x))  # type: ignore[arg-type]
    for (key, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        if ".parametrizations." not in key or not key.endswith(".original"):
            assert torch.equal(a, b), key  # every tensor but the quantized originals, bit for bit


def test_tied_tensors_are_stored_once(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    info = packed(model, tmp_path / "t.geta")
    entries = read_manifest(tmp_path / "t.geta")["tensors"]
    assert [e["encoding"] for e in entries].count("alias") == 1 and info.raw_tensors == 3
    restored = load_packed(tmp_path / "t.geta", _scrambled(model))
    assert restored[0].weight is restored[1].weight or torch.equal(restored[0].weight, restored[1].weight)


@pytest.mark.parametrize("name", ["resnet", "mha", "transformer_pre_ln", "hf_llama"])
def test_loads_into_the_model_as_built_before_prepare(tmp_path: Path, name: str) -> None:
    """No skeleton to keep: a fresh, dense, unquantized model of the class is enough."""
    if name.startswith("hf_"):
        pytest.importorskip("transformers")
    model, x = _compressed(name, 4, exponent=0.9)
    packed(model, tmp_path / "m.geta")
    fresh, _ = zoo.build(name, seed=1)  # other random weights, full widths, no quantizers
    restored = load_packed(tmp_path / "m.geta", fresh)
    assert restored is fresh
    assert max_relative_error(model_outputs(restored, x), model_outputs(model, x)) == 0.0
    kinds = {n: type_before_parametrizations(m) for n, m in model.named_modules()}
    assert {n: type_before_parametrizations(m) for n, m in restored.named_modules()} == kinds
    shapes = {k: t.shape for k, t in model.state_dict().items()}
    assert {k: t.shape for k, t in restored.state_dict().items()} == shapes

    def sizes(m: nn.Module) -> dict[str, tuple[object, object]]:
        return {n: (vars(s).get("out_features"), vars(s).get("num_heads")) for n, s in m.named_modules()}

    assert sizes(restored) == sizes(model)


def test_loads_into_a_model_built_on_meta(tmp_path: Path) -> None:
    model, x = _compressed("resnet", 3)
    packed(model, tmp_path / "m.geta")
    with torch.device("meta"):
        skeleton, _ = zoo.build("resnet")
    restored = load_packed(tmp_path / "m.geta", skeleton)
    assert not any(t.is_meta for t in restored.state_dict().values())
    assert torch.equal(model_outputs(restored, x), model_outputs(model, x))  # type: ignore[arg-type]


def test_a_model_of_another_architecture_is_refused(tmp_path: Path) -> None:
    model, _ = _compressed("mlp", 4)
    packed(model, tmp_path / "m.geta")
    with pytest.raises(GetaError, match="class that was saved"):
        load_packed(tmp_path / "m.geta", nn.Linear(2, 2))
    other = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Conv1d(32, 32, 1), nn.ReLU(), nn.Linear(32, 5))
    with pytest.raises(GetaError, match="class that was saved"):
        load_packed(tmp_path / "m.geta", other)
    with pytest.raises(GetaError, match="does not fit"):
        load_packed(tmp_path / "m.geta", nn.Sequential(*zoo.build("mlp")[0], nn.Linear(5, 5)))  # one more


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = _compressed("mlp", 4, acts=False)
    target = tmp_path / "m.geta"
    target.write_bytes(b"previous")

    def fail(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        packed(model, target)
    assert target.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["m.geta"]
    monkeypatch.undo()
    packed(model, target)
    assert read_manifest(target)["format"] == "geta.packed"
    (tmp_path / "other").write_bytes(b"x" * 40)
    with pytest.raises(GetaError, match="not a geta packed file"):
        load_packed(tmp_path / "other", model)
