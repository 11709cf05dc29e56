"""Tiny Hugging Face checkpoints made on the spot: a BPE tokenizer and random small models.

For demos, examples and tests that must run offline in seconds: `train_tokenizer` trains a
byte-level BPE tokenizer with the ``tokenizers`` library on any texts (by default the
standard-library source of `geta.recipes.text.default_corpus`), and `save_tiny_checkpoint`
writes a randomly initialised Llama, Qwen2 or GPT-2 (a causal LM or a sequence classifier)
together with that tokenizer into a directory, exactly as ``save_pretrained`` would for a
downloaded model -- so ``geta compress --model hf:DIR`` and ``from_pretrained(DIR)`` read it
like any other checkpoint.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     path = save_tiny_checkpoint(d, "gpt2", vocab_size=300)
...     sorted(p.name for p in path.iterdir() if p.suffix == ".json")
['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json']
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from geta.recipes.errors import RecipeError
from geta.recipes.text import default_corpus

__all__ = ["FAMILIES", "EOS", "PAD", "train_tokenizer", "tiny_config", "save_tiny_checkpoint"]

FAMILIES = ("llama", "qwen2", "gpt2")
EOS = "<|endoftext|>"  # separates documents of a packed stream
PAD = "<pad>"  # fills rows of labelled data


def train_tokenizer(texts: Iterable[str] | None = None, *, vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer (``PreTrainedTokenizerFast``) trained on ``texts`` in about a second.

    Every byte is in the alphabet, so any text encodes; ``EOS`` and ``PAD`` are special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if texts is None:
        texts = [default_corpus().decode("utf-8", "replace")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)


def tiny_config(family: str, vocab_size: int, *, max_positions: int = 256, **overrides: Any) -> Any:
    """A 2-layer config of ``family`` (hidden 64; Llama and Qwen2 with 4 query over 2 kv heads)."""
    import transformers

    if family == "gpt2":
        base: dict[str, Any] = dict(n_embd=64, n_layer=2, n_head=4, n_positions=max_positions)
        base |= dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        cls: Any = transformers.GPT2Config
    elif family in ("llama", "qwen2"):
        base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
        base |= dict(num_key_value_heads=2, max_position_embeddings=max_positions)
        cls = transformers.LlamaConfig if family == "llama" else transformers.Qwen2Config
    else:
        raise RecipeError(f"unknown tiny model family {family!r}; use one of {', '.join(FAMILIES)}")
    return cls(vocab_size=vocab_size, tie_word_embeddings=False, **(base | overrides))


def save_tiny_checkpoint(
    directory: str | Path,
    family: str = "llama",
    *,
    classes: int | None = None,
    vocab_size: int = 512,
    tokenizer: Any = None,
    seed: int = 0,
) -> Path:
    """Write a random tiny ``family`` model and its tokenizer into ``directory``; return the path.

    ``classes`` makes it a sequence classifier with that many labels (default: a causal LM).
    ``tokenizer`` defaults to `train_tokenizer` on the standard-library source; the model's
    vocabulary is the tokenizer's size.
    """
    import transformers

    tokenizer = tokenizer if tokenizer is not None else train_tokenizer(vocab_size=vocab_size)
    eos = tokenizer.eos_token_id
    config = tiny_config(
        family, len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, bos_token_id=eos
    )
    if classes is not None:
        config.num_labels = classes
        auto: Any = transformers.AutoModelForSequenceClassification
    else:
        auto = transformers.AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config)
    path = Path(directory)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
