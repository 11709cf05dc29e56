"""Tiny Hugging Face checkpoints written once per test session (offline, seconds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def bpe_tokenizer() -> Any:
    """A byte-level BPE tokenizer (384 tokens) trained on standard-library source."""
    pytest.importorskip("transformers")
    from geta.recipes.tiny import train_tokenizer

    return train_tokenizer(vocab_size=384)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer: Any) -> dict[str, Path]:
    """``{"llama" | "qwen2" | "gpt2": causal LM dir, "classifier": a 3-class Qwen2 classifier dir}``."""
    from geta.recipes.tiny import FAMILIES, save_tiny_checkpoint

    root = tmp_path_factory.mktemp("hf")
    dirs = {f: save_tiny_checkpoint(root / f, f, tokenizer=bpe_tokenizer) for f in FAMILIES}
    dirs["classifier"] = save_tiny_checkpoint(root / "cls", "qwen2", classes=3, tokenizer=bpe_tokenizer)
    return dirs
