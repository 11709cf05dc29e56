"""Text and JSONL documents turned into token tensors: packed LM blocks or padded labelled rows.

A data specification names documents: ``text:FILE`` (one document), ``text:DIR`` (every UTF-8
file under it, `geta.recipes.text.text_files`), ``jsonl:FILE[:FIELD]`` (one document per line,
the string under FIELD, default ``"text"``). An `Encoder` turns documents into token ids: the
`bytes_encoder` (vocabulary 256, the built-in recipes' default) or `tokenizer_encoder`, a Hugging
Face tokenizer (e.g. the one saved next to an ``hf:DIR`` checkpoint).

- `lm_blocks` (causal language modelling): the documents are encoded, joined by the end-of-text
  token (when the tokenizer has one) and packed into fixed-length blocks of ``seq_len`` tokens,
  each with the next token of every position as its target; the last 10 % of the stream is the
  held-out split.
- `labelled_rows` (sequence classification): one row per JSONL record, truncated or padded to
  ``seq_len`` with the pad token, its class from the record's ``"label"``; a seeded 10 % is
  held out.

>>> enc = bytes_encoder()
>>> enc.encode(["hi", "yo"]), enc.vocab_size, enc.eos
([[104, 105], [121, 111]], 256, None)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from geta.recipes.bundle import DataBundle, Task
from geta.recipes.errors import RecipeError
from geta.recipes.text import lm_bundle, text_files

__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_FIELD",
    "LABEL_KEY",
    "Encoder",
    "bytes_encoder",
    "tokenizer_encoder",
    "text_documents",
    "jsonl_documents",
    "lm_blocks",
    "labelled_rows",
]

BLOCK_SIZE = 128  # tokens per block of tokenized data when no --seq-len is given
DEFAULT_FIELD = "text"  # the JSONL key holding the document when ``jsonl:FILE`` names none
LABEL_KEY = "label"  # the JSONL key holding the class of a record (sequence classification)
_TEST_FRACTION = 0.1


@dataclass(frozen=True)
class Encoder:
    """Documents -> token ids, with the facts a data set needs about the vocabulary."""

    encode: Callable[[list[str]], list[list[int]]]
    vocab_size: int
    eos: int | None  # appended after every document of a packed stream (None: nothing)
    pad: int  # fills short rows of labelled data
    name: str  # "bytes" or the tokenizer's class, for messages


def bytes_encoder() -> Encoder:
    """UTF-8 bytes as tokens (vocabulary 256, no end-of-text token, pad 0)."""
    return Encoder(lambda docs: [list(d.encode("utf-8")) for d in docs], 256, None, 0, "bytes")


def tokenizer_encoder(tokenizer: Any) -> Encoder:
    """A Hugging Face tokenizer as an `Encoder` (no special tokens added inside a document).

    The end-of-text token separates packed documents; the pad token (or else the end-of-text
    token, or else 0) fills labelled rows.
    """

    def encode(docs: list[str]) -> list[list[int]]:
        return [list(ids) for ids in tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]]

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    return Encoder(encode, len(tokenizer), eos, int(pad), type(tokenizer).__name__)


def text_documents(path: str) -> list[str]:
    """The text of ``path`` (a file) or of every UTF-8 file under it (a folder), one per file."""
    return [f.read_text(encoding="utf-8", errors="replace") for f in text_files(path)]


def _jsonl_records(path: str) -> tuple[Path, list[tuple[int, Any]]]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise RecipeError(f"JSONL file {file} does not exist; pass --data jsonl:FILE[:FIELD]")
    records = []
    with file.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise RecipeError(
                    f"{file}, line {number}: not valid JSON ({exc.msg}); fix or remove the line"
                ) from None
    return file, records


def jsonl_documents(
    path: str, field: str = DEFAULT_FIELD, *, labels: bool = False
) -> tuple[list[str], list[Any]]:
    """The string under ``field`` of every record of a JSONL file (and its ``"label"`` if ``labels``).

    A record without the field (or the label) names the file, the line and the key.
    """
    file, records = _jsonl_records(path)
    docs, classes = [], []
    for number, record in records:
        keys = (field, LABEL_KEY) if labels else (field,)
        for key in keys:
            if not isinstance(record, dict) or key not in record:
                raise RecipeError(
                    f"{file}, line {number}: the record has no field {key!r}; every line must be a JSON "
                    f"object with {' and '.join(map(repr, keys))} (jsonl:FILE:FIELD reads another field)"
                )
        if not isinstance(record[field], str):
            raise RecipeError(
                f"{file}, line {number}: field {field!r} holds {type(record[field]).__name__}, not a string"
            )
        docs.append(record[field])
        if labels:
            classes.append(record[LABEL_KEY])
    if not any(d.strip() for d in docs):
        raise RecipeError(f"JSONL file {file} holds no text under {field!r}; pass a file with documents")
    return docs, classes


def lm_blocks(name: str, docs: list[str], encoder: Encoder, seq_len: int, *, where: str) -> DataBundle:
    """Encode ``docs``, join them (end-of-text between), pack into blocks of ``seq_len`` (LM task)."""
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise RecipeError(f"{where} holds no text; pass a non-empty file or folder")
    stream: list[int] = []
    for ids in encoder.encode(docs):
        stream.extend(ids)
        if encoder.eos is not None:
            stream.append(encoder.eos)
    return lm_bundle(name, torch.tensor(stream, dtype=torch.long), encoder.vocab_size, seq_len, where=where)


def _class_indices(classes: list[Any], where: str) -> tuple[torch.Tensor, int]:
    if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        if min(classes) < 0:
            raise RecipeError(f"{where}: integer labels must be >= 0, found {min(classes)}")
        return torch.tensor(classes, dtype=torch.long), max(classes) + 1
    names = sorted({str(c) for c in classes})  # string labels: classes in sorted order
    index = {n: i for i, n in enumerate(names)}
    return torch.tensor([index[str(c)] for c in classes], dtype=torch.long), len(names)


def labelled_rows(
    name: str, docs: list[str], classes: list[Any], encoder: Encoder, seq_len: int, *, seed: int, where: str
) -> DataBundle:
    """One row of ``seq_len`` token ids per document (truncated / padded), classes from the labels."""
    if len(docs) < 2:
        raise RecipeError(f"{where} holds {len(docs)} labelled record(s); classification needs at least 2")
    y, num_classes = _class_indices(classes, where)
    x = torch.full((len(docs), seq_len), encoder.pad, dtype=torch.long)  # (N, T)
    for i, ids in enumerate(encoder.encode(docs)):
        ids = ids[:seq_len]
        x[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(len(docs) * _TEST_FRACTION))
    test, train = order[:n_test], order[n_test:]
    return DataBundle(name, Task.CLASSIFY, x[train], y[train], x[test], y[test], num_classes)
