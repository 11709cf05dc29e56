"""``geta compress --model hf:DIR``: a tiny Llama checkpoint from disk, compressed end to end."""

from __future__ import annotations

import fnmatch
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from .conftest import Result

pytest.importorskip("transformers")

SOURCE = Path(fnmatch.__file__)  # standard-library text to model (6 kB)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama and a BPE tokenizer (384 tokens) trained on stdlib source, on disk."""
    from geta.recipes.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "llama", "llama", vocab_size=384)


def test_compress_a_checkpoint_from_disk_on_tokenized_text(
    llama_dir: Path, tmp_path: Path, geta_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    shutil.copy(SOURCE, llama_dir.parent / "corpus.txt")
    monkeypatch.chdir(llama_dir.parent)  # relative paths: config.yaml must store them absolute
    result = geta_cli(
        "compress", "--model", f"hf:{llama_dir.name}", "--data", "text:corpus.txt", "--seq-len", "32",
        "--dense-epochs", "1", "--epochs", "2", "--batch-size", "64", "--quantize-embeddings",
        "--no-plots", "--no-export", "--out", out,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert {"report.json", "report.md", "compressed.pt", "dense.pt", "config.yaml"} <= {
        p.name for p in out.iterdir()
    }
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "lm" and report["compressed"]["perplexity"] > 1
    assert report["training"]["optimizer"] == "adamw" and report["training"]["clip_norm"] > 0  # hf: defaults
    from geta.recipes.defaults import HF_DEFAULTS

    assert report["training"]["distill"] == HF_DEFAULTS.distill > 0  # distils from the dense model
    assert report["training"]["dense_lr"] == HF_DEFAULTS.dense_lr
    assert report["group_sparsity"] > 0.5
    assert "lm.model.embed_tokens.weight" in report["bits"]["weight"]  # --quantize-embeddings
    assert all("test_perplexity" in h for h in report["history"])
    again = geta_cli("report", out, "--json")  # rebuilt from hf:DIR + model.geta, no pickle read
    assert again.code == 0, again.err
    assert json.loads(again.out)["totals"]["relative_bops"] == pytest.approx(report["relative_bops"])
    assert "perplexity" in (out / "report.md").read_text()
    assert "perplexity" in result.err  # the per-epoch lines and the dense note show it
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"] == f"hf:{llama_dir.absolute()}"
    assert config["data"] == f"text:{(llama_dir.parent / 'corpus.txt').absolute()}"
    monkeypatch.chdir(tmp_path)  # another working directory
    again = geta_cli("report", out)  # the dense reference is rebuilt from hf:DIR + dense.pt
    assert again.code == 0 and "perplexity" in again.out, again.err


def test_inspect_a_checkpoint(llama_dir: Path, geta_cli: Callable[..., Result]) -> None:
    result = geta_cli("inspect", "--model", f"hf:{llama_dir}", "--data", f"text:{SOURCE}")
    assert result.code == 0, result.err
    assert "prunable" in result.out and "ops without a handler" in result.out


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        ("hf:/no/such/dir", "text", "checkpoint directory /no/such/dir does not exist"),
        ("hf:{ckpt}", "jsonl:{tmp}/none.jsonl", "none.jsonl does not exist"),
        ("hf:{ckpt}", "text:{tmp}/empty.txt", "holds no text"),
        ("hf:{ckpt}", "digits", "needs text to model"),
    ],
)
def test_bad_checkpoint_or_data_is_one_line(
    model: str, data: str, message: str, llama_dir: Path, tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    (tmp_path / "empty.txt").write_text("")
    spec = {"ckpt": llama_dir, "tmp": tmp_path}
    result = geta_cli(
        "compress", "--model", model.format(**spec), "--data", data.format(**spec), "--out", tmp_path / "o"
    )
    assert result.code == 2 and message in result.err and len(result.err.strip().splitlines()) == 1


def test_compress_a_sequence_classifier_on_labelled_jsonl(
    tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    from geta.recipes.tiny import save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(tmp_path / "cls", "gpt2", classes=2, vocab_size=384)
    lines = [{"body": ("def f(x): return x\n" if i % 2 else "class A: pass\n") * (1 + i % 4), "label": i % 2}
             for i in range(96)]  # fmt: skip
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "run"
    result = geta_cli(
        "compress", "--model", f"hf:{ckpt}", "--data", f"jsonl:{data}:body", "--seq-len", "24",
        "--dense-epochs", "1", "--epochs", "2", "--no-plots", "--no-export", "--quiet", "--out", out,
    )  # fmt: skip
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "classify" and "perplexity" not in report["compressed"]
    assert report["compressed"]["accuracy"] >= 0.5 and report["group_sparsity"] > 0
