"""Integer ``hf/`` folders: quantized projections stored as codes that plain transformers decodes.

A tiny Llama and a tiny Qwen2 with tied embeddings are prepared weights-only with
``uniform_layers``, given different bit widths per layer (2..8), half their units zeroed and
converted. `geta.export.pretrained` then writes int32-packed codes plus a per-tensor scale in
the compressed-tensors format. The invariants: the projections are stored as integers at their
own bit widths; a fresh process that never imports geta loads the folder with plain
``from_pretrained`` and computes the converted model's logits; geta's loader reads it too; the
folder is about as large as the packed file; the bit layout is compressed-tensors' own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import geta
from geta.export import load_pretrained, packed, pretrained
from geta.export.intweights import pack_rows, unpack_rows
from geta.testing import max_relative_error, zero_random_groups

pytest.importorskip("transformers")

FAMILIES = ["llama", "qwen2"]
VOCAB, SEQ = 96, 12
BITS = (2, 3, 4, 5, 6, 7, 8)

LOADER = """
import json, sys, torch, transformers
ids = torch.load(sys.argv[1])
logits = {}
for folder in sys.argv[2:]:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logits[folder] = model(input_ids=ids).logits
torch.save(logits, sys.argv[1] + ".out")
print(json.dumps({"geta_imported": any(m.split(".")[0] == "geta" for m in sys.modules)}))
"""


@dataclass
class Export:
    family: str
    converted: nn.Module
    folder: Path
    packed_bytes: int
    logits: torch.Tensor


def _model(family: str) -> nn.Module:
    """A random tiny model; Qwen2 with its lm_head tied to the embedding (as small Qwen2s are)."""
    import transformers

    from geta.recipes.tiny import tiny_config

    sizes = dict(num_hidden_layers=2, intermediate_size=64, attn_implementation="eager")
    config = tiny_config(family, VOCAB, **sizes)
    config.tie_word_embeddings = family == "qwen2"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == (family == "qwen2")
    return model


def _compress(family: str, ids: torch.Tensor) -> nn.Module:
    model = _model(family)
    plan = geta.prepare(model, {"input_ids": ids[:2]}, geta.Config(weight_bits=(2, 8), uniform_layers=True))
    with torch.no_grad():
        for i, q in enumerate(plan.quantizers.values()):
            q.set_bits(BITS[i % len(BITS)])
    zero_random_groups(plan, 0.4, seed=1)
    return geta.convert(model, plan).eval()


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Export]:
    root = tmp_path_factory.mktemp("int")
    ids = torch.randint(0, VOCAB, (3, SEQ))
    torch.save(ids, root / "ids.pt")
    out = {}
    for family in FAMILIES:
        converted = _compress(family, ids)
        with torch.no_grad():
            logits = converted(input_ids=ids).logits
        pretrained(converted, root / family)
        info = packed(converted, root / f"{family}.geta")
        out[family] = Export(family, converted, root / family, info.file_bytes, logits)
    return out


@pytest.fixture(scope="module")
def plain_logits(exports: dict[str, Export]) -> tuple[dict[str, torch.Tensor], bool]:
    """Logits of every folder loaded by plain transformers in a fresh process without geta."""
    pytest.importorskip("compressed_tensors")
    ids = next(iter(exports.values())).folder.parent / "ids.pt"
    folders = [str(e.folder) for e in exports.values()]
    done = subprocess.run(
        [sys.executable, "-c", LOADER, str(ids), *folders], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    flags = json.loads(done.stdout.strip().splitlines()[-1])
    return torch.load(str(ids) + ".out"), flags["geta_imported"]


def _config(e: Export) -> dict:
    return json.loads((e.folder / "config.json").read_text())


@pytest.mark.parametrize("family", FAMILIES)
def test_projections_are_stored_as_integer_codes_at_their_own_bit_widths(
    family: str, exports: dict[str, Export]
) -> None:
    e = exports[family]
    saved = load_file(str(e.folder / "model.safetensors"))
    groups = _config(e)["quantization_config"]["config_groups"]
    bits_of = {n: g["weights"]["num_bits"] for g in groups.values() for n in g["targets"]}
    projections = [n for n, m in e.converted.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    assert projections and set(projections) <= set(bits_of)
    assert len(set(bits_of.values())) >= 5  # one folder, many widths
    for name in projections:
        assert f"{name}.weight" not in saved and saved[f"{name}.weight_packed"].dtype == torch.int32
        rows, cols = saved[f"{name}.weight_shape"].tolist()
        assert saved[f"{name}.weight_packed"].shape == (rows, -(-cols * bits_of[name] // 32))
    floats = [k for k, t in saved.items() if t.is_floating_point() and not k.endswith("weight_scale")]
    assert all("norm" in k or "embed_tokens" in k or k.endswith(".bias") for k in floats), floats


@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_process_without_geta_computes_the_converted_logits(
    family: str, exports: dict[str, Export], plain_logits: tuple[dict[str, torch.Tensor], bool]
) -> None:
    logits, geta_imported = plain_logits
    assert not geta_imported
    e = exports[family]
    assert max_relative_error(logits[str(e.folder)], e.logits) <= 1e-3
    assert max_relative_error(logits[str(e.folder)], e.logits) <= 1e-5  # in fact the same weights


@pytest.mark.parametrize("family", FAMILIES)
def test_geta_loader_reads_the_integer_folder(family: str, exports: dict[str, Export]) -> None:
    e = exports[family]
    loaded = load_pretrained(e.folder)
    assert not hasattr(loaded.config, "quantization_config")  # float weights now: a re-save is plain float
    ids = torch.randint(0, VOCAB, (2, SEQ))
    with torch.no_grad():
        assert max_relative_error(loaded(input_ids=ids).logits, e.converted(input_ids=ids).logits) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_is_about_as_large_as_the_packed_file(family: str, exports: dict[str, Export]) -> None:
    e = exports[family]
    weights = (e.folder / "model.safetensors").stat().st_size
    assert weights <= 1.25 * e.packed_bytes  # headers and 32-bit row padding on a tiny model
    float_folder = e.folder.parent / f"{family}-float"
    pretrained(e.converted, float_folder, integer=False)
    assert (float_folder / "model.safetensors").stat().st_size > 1.5 * weights


def test_quantized_tied_head_is_stored_as_codes_and_an_unquantized_one_stays_tied(
    exports: dict[str, Export], tmp_path: Path
) -> None:
    config = _config(exports["qwen2"])
    saved = load_file(str(exports["qwen2"].folder / "model.safetensors"))
    assert config["tie_word_embeddings"] is False and "lm_head.weight_packed" in saved  # head: codes
    model = _model("qwen2")
    ids = torch.randint(0, VOCAB, (2, SEQ))
    config = geta.Config(weight_bits=(4, 8), exclude_quant=("lm_head",))
    plan = geta.prepare(model, {"input_ids": ids}, config)
    small = geta.convert(model, plan)
    pretrained(small, tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is True
    assert not any(k.startswith("lm_head") for k in saved) and "model.embed_tokens.weight" in saved
    loaded = load_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_uniform_model_exported_without_plain_writes_the_pruned_sizes(exports: dict[str, Export]) -> None:
    config = _config(exports["llama"])  # exported with plain=False
    layer = exports["llama"].converted.model.layers[0]
    assert config["intermediate_size"] == layer.mlp.up_proj.out_features < 64
    assert config["num_key_value_heads"] == layer.self_attn.k_proj.out_features // layer.self_attn.head_dim
    assert config["geta"]["shapes"] == {}


@pytest.mark.parametrize("bits", BITS)
def test_bit_layout_is_compressed_tensors_own(bits: int) -> None:
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    hi = 2 ** (bits - 1) - 1
    for cols in (1, 31, 32, 45, 100):
        codes = torch.randint(-hi, hi + 1, (3, cols))
        words = pack_rows(codes, bits)
        assert torch.equal(words, helpers.pack_to_int32(codes.to(torch.int8), bits))
        assert torch.equal(unpack_rows(words, bits, (3, cols)), codes)
