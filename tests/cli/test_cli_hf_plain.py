"""``geta compress --model hf:DIR --uniform-layers``: the ``hf/`` output loads with plain transformers."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from geta.testing import max_relative_error

from .conftest import Result

transformers = pytest.importorskip("transformers")

SOURCE = Path(fnmatch.__file__)  # standard-library text to model (6 kB)


def test_uniform_layers_run_writes_a_folder_plain_transformers_loads(
    tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    from geta.recipes.tiny import save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", "qwen2", vocab_size=384)
    out = tmp_path / "run"
    result = geta_cli(
        "compress", "--model", f"hf:{ckpt}", "--data", f"text:{SOURCE}", "--seq-len", "32",
        "--dense-epochs", "1", "--epochs", "2", "--batch-size", "64", "--sparsity", "0.35",
        "--act-bits", "none", "--uniform-layers", "--no-plots", "--quiet", "--out", out,
    )  # fmt: skip
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert report["options"]["uniform_layers"] is True and "error" not in report["exports"]["pretrained"]
    plain = transformers.AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    config = json.loads((out / "hf" / "config.json").read_text())
    assert config["intermediate_size"] < 128 and config["geta"]["shapes"] == {}
    small = torch.load(out / "compressed.pt", weights_only=False)
    hf = next(m for m in small.modules() if isinstance(m, transformers.PreTrainedModel)).eval()
    ids = torch.randint(0, 384, (2, 32))
    with torch.no_grad():  # weights only: plain HF computes what geta's converted model computes
        assert max_relative_error(plain(input_ids=ids).logits, hf(input_ids=ids).logits) <= 1e-5
    exported = tmp_path / "exported"
    again = geta_cli("export", out, "--format", "hf", "--out", exported)
    assert again.code == 0 and f"wrote {exported}" in again.out, again.err
    for folder in (out / "hf", exported):  # self-contained: tokenizer, generation config, card
        names = {p.name for p in folder.iterdir()}
        assert {"tokenizer.json", "generation_config.json", "README.md", "model.safetensors"} <= names
        card = (folder / "README.md").read_text()
        assert "geta compress --model hf:" in card and "--uniform-layers" in card and "perplexity" in card
        assert "AutoModelForCausalLM.from_pretrained" in card
        saved = load_file(str(folder / "model.safetensors"))
        assert saved["model.layers.0.mlp.up_proj.weight_packed"].dtype == torch.int32
    size = (out / "hf" / "model.safetensors").stat().st_size
    assert size <= 1.1 * (out / "model.geta").stat().st_size  # about the packed size
    assert (exported / "model.safetensors").read_bytes() == (out / "hf" / "model.safetensors").read_bytes()
    refused = geta_cli("export", out, "--format", "hf", "--out", exported)
    assert refused.code != 0 and "not an empty directory" in refused.err


def test_uniform_layers_with_global_selection_is_one_line(
    tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    result = geta_cli(
        "compress", "--model", "llama", "--data", "text", "--selection", "global", "--uniform-layers",
        "--out", tmp_path / "o",
    )  # fmt: skip
    assert result.code == 2 and "--uniform-layers needs --selection uniform" in result.err
