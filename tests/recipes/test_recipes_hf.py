"""``hf:DIR`` checkpoints from disk and text / JSONL data tokenized with their tokenizer."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from geta.recipes import RecipeError, Task, build_model, load_data, load_run_data
from geta.recipes.hf import HFKind, open_checkpoint
from geta.recipes.tokens import bytes_encoder, tokenizer_encoder

pytest.importorskip("transformers")

SOURCE = Path(textwrap.__file__)  # a standard-library module: about 20 kB of text


def _jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_causal_lm_checkpoint_loads_its_weights_and_prepares(
    family: str, checkpoints: dict[str, Path]
) -> None:
    from transformers import AutoModelForCausalLM

    import geta

    spec = f"hf:{checkpoints[family]}"
    assert open_checkpoint(str(checkpoints[family])).kind is HFKind.CAUSAL_LM
    data = load_run_data(spec, f"text:{SOURCE}", seq_len=32)
    model = build_model(spec, data).eval()
    ids = data.example(2)[0]
    reference = AutoModelForCausalLM.from_pretrained(checkpoints[family], local_files_only=True).eval()
    with torch.no_grad():
        assert torch.equal(model(ids), reference(input_ids=ids).logits)  # the saved weights, not random ones
    plan = geta.prepare(model, (ids,), geta.Config(target_sparsity=0.5, weight_bits=(4, 8)))
    assert len(plan.prunable_groups) >= 4  # heads and MLP hidden units of both layers


def test_text_is_tokenized_with_the_checkpoints_tokenizer_and_packed(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoints["llama"], local_files_only=True)
    a, b = "def first():\n    return 1\n" * 40, "class Second:\n    pass\n" * 40
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(a)
    (tmp_path / "docs" / "b.py").write_text(b)
    (tmp_path / "docs" / "blob.bin").write_bytes(bytes([0xFF, 0xFE, 0x00]) * 10)  # not text: skipped
    data = load_run_data(f"hf:{checkpoints['llama']}", f"text:{tmp_path / 'docs'}", seq_len=16)
    eos = tok.eos_token_id
    stream = (
        tok(a, add_special_tokens=False)["input_ids"] + [eos] + tok(b, add_special_tokens=False)["input_ids"]
    )
    stream = torch.tensor([*stream, eos])
    cut = int(len(stream) * 0.9)
    n = (cut - 1) // 16
    assert data.task is Task.LM and data.input_shape == (16,) and data.num_classes == len(tok)
    assert torch.equal(data.x_train, stream[: n * 16].view(n, 16))  # blocks in order, documents joined by eos
    assert torch.equal(data.y_train, stream[1 : n * 16 + 1].view(n, 16))  # the next token of each position
    assert torch.equal(data.x_test[0], stream[cut : cut + 16])  # the held-out tail
    assert load_data(f"text:{tmp_path / 'docs'}").num_classes == 256  # no tokenizer: byte-level


def test_jsonl_reads_the_default_or_named_field(bpe_tokenizer: Any, tmp_path: Path) -> None:
    enc = tokenizer_encoder(bpe_tokenizer)
    docs = [{"text": f"line {i} " * 30, "body": f"other {i} " * 30} for i in range(20)]
    path = _jsonl(tmp_path / "d.jsonl", docs)
    default = load_data(f"jsonl:{path}", encoder=enc, seq_len=8)
    named = load_data(f"jsonl:{path}:body", encoder=enc, seq_len=8)
    assert default.input_shape == (8,) and not torch.equal(default.x_train[:3], named.x_train[:3])
    first = torch.tensor(bpe_tokenizer(docs[0]["body"], add_special_tokens=False)["input_ids"][:8])
    assert torch.equal(named.x_train[0], first)
    assert load_data(f"jsonl:{path}").num_classes == 256  # byte-level without a tokenizer
    assert bytes_encoder().encode(["é"]) == [[0xC3, 0xA9]]


def test_labelled_jsonl_for_a_sequence_classifier(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    labels = ["neg", "pos", "mid"]
    rows = [{"text": "def f(x): return x " * (1 + i % 4), "label": labels[i % 3]} for i in range(30)]
    path = _jsonl(tmp_path / "c.jsonl", rows)
    spec = f"hf:{checkpoints['classifier']}"
    data = load_run_data(spec, f"jsonl:{path}", seq_len=24)
    assert data.task is Task.CLASSIFY and data.num_classes == 3 and len(data.x_test) == 3
    assert sorted(set(torch.cat([data.y_train, data.y_test]).tolist())) == [0, 1, 2]  # mid, neg, pos
    model = build_model(spec, data).eval()
    assert model(data.example(4)[0]).shape == (4, 3)
    with pytest.raises(RecipeError, match="labelled text"):
        load_run_data(spec, f"text:{SOURCE}")


def test_image_classifier_checkpoint_on_digits(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=64, num_labels=10)  # fmt: skip
    ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit")
    data = load_run_data(f"hf:{tmp_path / 'vit'}", "digits")
    model = build_model(f"hf:{tmp_path / 'vit'}", data).eval()
    assert model(data.example(3)[0]).shape == (3, 10)
    cfg.image_size = 16
    ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit16")
    with pytest.raises(RecipeError, match=r"takes images of \(1, 16, 16\)"):
        build_model(f"hf:{tmp_path / 'vit16'}", data)


def _copy_without(src: Path, dst: Path, *names: str) -> Path:
    shutil.copytree(src, dst)
    for name in names:
        (dst / name).unlink()
    return dst


def test_checkpoint_errors_say_what_is_wrong(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    llama = checkpoints["llama"]
    cases = [
        (tmp_path / "nope", "does not exist"),
        (_copy_without(llama, tmp_path / "noconfig", "config.json"), "has no config.json"),
    ]
    odd = _copy_without(llama, tmp_path / "odd")
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaModel"]}))
    cases.append((odd, "architecture LlamaModel is not a causal LM, sequence classifier or image classifier"))
    for path, message in cases:
        with pytest.raises(RecipeError, match=message):
            load_run_data(f"hf:{path}", f"text:{SOURCE}")
    bare = _copy_without(llama, tmp_path / "bare", "tokenizer.json", "tokenizer_config.json")
    with pytest.raises(RecipeError, match="has no tokenizer"):
        load_run_data(f"hf:{bare}", f"text:{SOURCE}")
    with pytest.raises(RecipeError, match=r"handles 256 positions.*--seq-len 256 or less"):
        build_model(f"hf:{llama}", load_run_data(f"hf:{llama}", f"text:{SOURCE}", seq_len=300))


def test_data_errors_name_the_file_line_and_field(bpe_tokenizer: Any, tmp_path: Path) -> None:
    enc = tokenizer_encoder(bpe_tokenizer)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(RecipeError, match="holds no text"):
        load_data(f"text:{empty}", encoder=enc)
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "a b c " * 50}, {"body": "x"}])
    with pytest.raises(RecipeError, match=r"d\.jsonl, line 2: the record has no field 'text'"):
        load_data(f"jsonl:{path}", encoder=enc)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n\n{oops\n')
    with pytest.raises(RecipeError, match=r"bad\.jsonl, line 3: not valid JSON"):
        load_data(f"jsonl:{tmp_path / 'bad.jsonl'}", encoder=enc)
    short = _jsonl(tmp_path / "short.jsonl", [{"text": "tiny"}])
    with pytest.raises(RecipeError, match="too few for windows of 128"):
        load_data(f"jsonl:{short}", encoder=enc)
    with pytest.raises(RecipeError, match="needs a file: pass --data jsonl:FILE"):
        load_data("jsonl", encoder=enc)


def test_export_form_unwraps_geta_wrappers_into_the_models_own_inputs() -> None:
    """What ``geta compress`` exports: the HF model with ``input_ids`` + ``attention_mask``, same logits."""
    from geta.recipes import export_form
    from geta.recipes.hf import CausalLM, SequenceClassifier
    from geta.testing import zoo

    lm, _ = zoo.build("hf_llama")
    ids = torch.tensor([[3, 5, 0, 7]])
    wrapped = CausalLM(lm).eval()
    module, inputs = export_form(wrapped, (ids,))
    assert module is lm and set(inputs) == {"input_ids", "attention_mask"}  # type: ignore[arg-type]
    assert torch.equal(inputs["attention_mask"], torch.ones_like(ids))  # type: ignore[index]
    with torch.no_grad():
        assert torch.equal(module(**inputs).logits, wrapped(ids))  # type: ignore[arg-type]
    bert, _ = zoo.build("hf_bert")
    _, masked = export_form(SequenceClassifier(bert, pad_id=0), (ids,))
    assert masked["attention_mask"].tolist() == [[1, 1, 0, 1]]  # type: ignore[index]
    plain = torch.nn.Linear(2, 2)
    assert export_form(plain, (torch.zeros(1, 2),))[0] is plain  # any other model: unchanged
