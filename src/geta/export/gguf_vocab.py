"""A Hugging Face byte-level BPE tokenizer as GGUF metadata (``tokenizer.ggml.*``), for llama.cpp.

llama.cpp tokenizes by itself from the GGUF file, so the file carries the whole tokenizer:

- ``tokenizer.ggml.model = "gpt2"``: byte-level BPE; ``tokens`` are the vocabulary strings in
  id order (bytes already mapped to printable characters, as the ``tokenizers`` library stores
  them), ``token_type`` 1 (normal), 3 (control: special tokens), 4 (user-defined: added,
  not special) or 5 (unused: ids past the tokenizer that the model's vocabulary pads);
  ``merges`` the BPE merges, each ``"left right"``;
- ``tokenizer.ggml.pre``: how text is split before BPE; llama.cpp knows the splits by name
  only. ``"gpt-2"`` for a ``ByteLevel`` pre-tokenizer with ``use_regex`` (what
  `geta.recipes.tiny.train_tokenizer` trains); ``"qwen2"`` / ``"llama-bpe"`` for a ``Split`` on
  Qwen2's / Llama-3's regex before a ``ByteLevel`` without one. Note that transformers'
  ``AutoTokenizer`` gives a ``qwen2`` checkpoint Qwen2's split whatever its ``tokenizer.json``
  says, so a folder is read through ``AutoTokenizer``, as ``geta compress`` and users read it.
  Other splits must be named with ``pre=``;
- ``bos/eos/padding_token_id`` and ``add_bos_token`` / ``add_eos_token`` (from the
  tokenizer's post-processor template).
"""

from __future__ import annotations

import json
import os
from typing import Any

from geta.export.info import ExportError

__all__ = ["TokenizerMetadata", "tokenizer_metadata"]

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # llama.cpp's token types

TokenizerMetadata = dict[str, Any]
"""GGUF key (without ``tokenizer.ggml.``) -> value."""


# The regexes of the Split pre-tokenizers llama.cpp knows by name (from the models' tokenizer.json).
_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPLITS = {_WORDS + r"\p{N}" + _REST: "qwen2", _WORDS + r"\p{N}{1,3}" + _REST: "llama-bpe"}


def _load_folder(path: str) -> Any:
    """The tokenizer in folder ``path`` as transformers' ``AutoTokenizer`` loads it, if installed."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _spec(tokenizer: Any) -> dict[str, Any]:
    """The ``tokenizer.json`` content of a transformers fast tokenizer, a folder, or a file path."""
    if isinstance(tokenizer, (str, os.PathLike)):
        path = os.fspath(tokenizer)
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise ExportError(f"tokenizer={path!r}: no tokenizer.json there")
        loaded = _load_folder(path) if os.path.isdir(path) else None
        if loaded is None:
            with open(file, encoding="utf-8") as f:
                return json.load(f)
        tokenizer = loaded
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not hasattr(backend, "to_str"):
        raise ExportError(
            f"tokenizer: a {type(tokenizer).__name__} has no tokenizer.json form; pass a transformers fast "
            "tokenizer, a tokenizers.Tokenizer, or the folder/file of its tokenizer.json"
        )
    return json.loads(backend.to_str())


def _pre_name(spec: dict[str, Any], pre: str | None) -> str:
    if pre is not None:
        return pre
    p = spec.get("pre_tokenizer") or {}
    if p.get("type") == "ByteLevel" and p.get("use_regex", True) and not p.get("add_prefix_space", False):
        return "gpt-2"
    parts = p.get("pretokenizers", []) if p.get("type") == "Sequence" else []
    if len(parts) == 2 and parts[0].get("type") == "Split" and parts[1].get("type") == "ByteLevel":
        regex = (parts[0].get("pattern") or {}).get("Regex")
        if regex in SPLITS and not parts[1].get("use_regex", True):
            return SPLITS[regex]
    raise ExportError(
        f"tokenizer: pre-tokenizer {json.dumps(p)[:120]} is not GPT-2's byte-level split; name llama.cpp's "
        "pre-tokenizer for it with pre=... (e.g. 'llama-bpe', 'qwen2')"
    )


def _template_adds(spec: dict[str, Any]) -> tuple[bool, bool]:
    """Whether the post-processor adds a special token before / after a single sequence."""
    post = spec.get("post_processor") or {}
    single = post.get("single") or [] if post.get("type") == "TemplateProcessing" else []
    special = ["SpecialToken" in piece for piece in single]
    return (bool(special) and special[0], bool(special) and special[-1])


def tokenizer_metadata(tokenizer: Any, vocab: int, *, pre: str | None = None) -> TokenizerMetadata:
    """The ``tokenizer.ggml.*`` metadata of a byte-level BPE tokenizer for a model of ``vocab`` rows.

    ``tokenizer``: a transformers fast tokenizer, a ``tokenizers.Tokenizer``, or the path of a
    folder holding ``tokenizer.json`` (or of the file). Raises `ExportError` for another
    tokenizer kind, a vocabulary larger than the model's, or an unknown pre-tokenizer.
    """
    spec = _spec(tokenizer)
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(f"tokenizer: a {model.get('type')} model; GGUF export writes byte-level BPE only")
    ids = dict(model["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    ids.update({content: t["id"] for content, t in added.items()})
    if max(ids.values()) >= vocab:
        raise ExportError(f"tokenizer: {max(ids.values()) + 1} tokens, more than the model's {vocab} rows")
    tokens = [f"[PAD{i}]" for i in range(vocab)]
    types = [UNUSED] * vocab
    for text, i in ids.items():
        tokens[i] = text
        t = added.get(text)
        types[i] = NORMAL if t is None else (CONTROL if t.get("special") else USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    bos, eos = _template_adds(spec)
    return {"model": "gpt2", "pre": _pre_name(spec, pre), "tokens": tokens, "token_type": types,
            "merges": merges, "add_bos_token": bos, "add_eos_token": eos}  # fmt: skip
