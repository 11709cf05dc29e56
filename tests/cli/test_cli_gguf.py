"""``geta export RUN --format gguf``: a compressed Hugging Face run as llama.cpp's file."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from .conftest import Result

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")

SOURCE = Path(fnmatch.__file__)  # standard-library text to model (6 kB)


@pytest.fixture(scope="module")
def qwen2_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 checkpoint with its BPE tokenizer, compressed weights-only with --uniform-layers."""
    from geta.cli.main import main
    from geta.recipes.tiny import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("gguf")
    ckpt = save_tiny_checkpoint(root / "ckpt", "qwen2", vocab_size=384)
    out = root / "run"
    argv = ["compress", "--model", f"hf:{ckpt}", "--data", f"text:{SOURCE}", "--seq-len", "32",
            "--dense-epochs", "1", "--epochs", "2", "--batch-size", "64", "--sparsity", "0.35",
            "--act-bits", "none", "--uniform-layers", "--no-plots", "--no-export", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out


def test_export_gguf_embeds_the_checkpoints_tokenizer(
    qwen2_run: Path, tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    target = tmp_path / "model.gguf"
    result = geta_cli("export", qwen2_run, "--format", "gguf", "--out", target)
    assert result.code == 0, result.err
    assert f"wrote {target}" in result.out and "quantized tensors" in result.out
    assert "no tokenizer found" not in result.out
    reader = gguf.GGUFReader(target)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.ffn_down.weight"] in {"Q4_0", "Q5_0", "Q8_0"}
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == 384
    assert reader.fields["general.architecture"].contents() == "qwen2"


def test_export_gguf_of_a_model_that_is_no_llm_is_one_line(
    tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    torch.save(torch.nn.Linear(4, 2), tmp_path / "linear.pt")
    result = geta_cli(
        "export", tmp_path / "linear.pt", "--trust-run-code", "--format", "gguf", "--out", tmp_path / "m.gguf"
    )
    assert result.code == 2 and "--format gguf: GGUF export needs a transformers causal LM" in result.err
    errors = [line for line in result.err.strip().splitlines() if not line.startswith("warning:")]
    assert len(errors) == 1 and not (tmp_path / "m.gguf").exists()  # besides --trust-run-code's warning


def test_export_gguf_with_a_missing_tokenizer_folder_is_one_line(
    qwen2_run: Path, tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    result = geta_cli(
        "export", qwen2_run, "--format", "gguf", "--out", tmp_path / "m.gguf", "--tokenizer", tmp_path
    )
    assert result.code == 2 and "--tokenizer" in result.err and "no tokenizer.json" in result.err


def test_tokenizer_flag_with_another_format_is_one_line(
    tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    torch.save(torch.nn.Linear(4, 2), tmp_path / "linear.pt")
    result = geta_cli(
        "export",
        tmp_path / "linear.pt",
        "--format",
        "packed",
        "--out",
        tmp_path / "m",
        "--tokenizer",
        tmp_path,
    )
    assert result.code == 2 and "--tokenizer is read by --format gguf only" in result.err
