"""`load_data`: parse a data specification and load it as a `DataBundle`.

A specification is ``NAME`` or ``NAME:PATH``:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1x8x8 images, 10 classes, offline);
- ``cifar10:DIR``: the CIFAR-10 python-pickle layout (data_batch_1..5, test_batch);
- ``imagefolder:DIR``: one sub-folder of images per class (``DIR/train`` + ``DIR/test``
  or ``DIR/val`` if present, else a split by seed), resized to 32x32 RGB (needs Pillow);
- ``text``, ``text:FILE`` or ``text:DIR``: language modelling on a text file or on every UTF-8
  file of a folder (default: the source of a few Python standard-library modules, read from disk);
- ``jsonl:FILE`` or ``jsonl:FILE:FIELD``: one document per line, the string under FIELD
  (default ``"text"``); with ``task=Task.CLASSIFY`` each record's ``"label"`` is its class.

Text is byte-level (vocabulary 256, windows of 64) unless an `Encoder` is given, e.g. the
tokenizer of a Hugging Face checkpoint (`geta.recipes.tokens.tokenizer_encoder`); tokenized text
is packed into blocks of ``seq_len`` tokens (default `geta.recipes.tokens.BLOCK_SIZE`).

Layers (imports point down): this module picks a loader; the loaders live in
`geta.recipes.images`, `geta.recipes.text` and `geta.recipes.tokens`; all build
`geta.recipes.bundle.DataBundle` (re-exported here with `Task`).

>>> bundle = load_data("digits", seed=0)
>>> bundle.task.value, tuple(bundle.example(2)[0].shape), bundle.num_classes
('classify', (2, 1, 8, 8), 10)
"""

from __future__ import annotations

from pathlib import Path

from geta.recipes import images, text, tokens
from geta.recipes.bundle import DataBundle, Task
from geta.recipes.errors import RecipeError

__all__ = ["DataBundle", "Task", "load_data", "DATA_SETS"]

DATA_SETS = ("digits", "cifar10:DIR", "imagefolder:DIR", "text[:FILE|DIR]", "jsonl:FILE[:FIELD]")
"""The data specifications `load_data` understands (for help texts)."""


def _split_spec(spec: str) -> tuple[str, str | None]:
    name, sep, path = spec.partition(":")
    return name.strip().lower(), (path if sep else None)


def load_data(
    spec: str,
    *,
    seed: int = 0,
    encoder: tokens.Encoder | None = None,
    seq_len: int | None = None,
    task: Task | None = None,
) -> DataBundle:
    """Load the data set named by ``spec`` (see the module docstring); errors say the fix.

    ``encoder`` tokenizes text (default: bytes); ``seq_len`` is the window / block length of text
    (default: 64 bytes, or `geta.recipes.tokens.BLOCK_SIZE` tokens with an encoder); ``task``
    is what the model will be trained for: text is language modelling unless it is
    `Task.CLASSIFY` (labelled JSONL).
    """
    name, path = _split_spec(spec)
    loaders = {
        "digits": lambda: images.load_digits_bundle(seed),
        "cifar10": lambda: images.load_cifar10(_need_path(name, path)),
        "imagefolder": lambda: images.load_imagefolder(_need_path(name, path), seed),
        "text": lambda: _text(path, encoder, seq_len),
        "jsonl": lambda: _jsonl(_need_path(name, path, "FILE[:FIELD]"), encoder, seq_len, task, seed),
    }
    if name not in loaders:
        raise RecipeError(f"unknown data set {spec!r}; use one of: {', '.join(DATA_SETS)}")
    if name == "digits" and path:
        raise RecipeError(
            f"data set 'digits' is built in and takes no path; got {spec!r}, pass --data digits"
        )
    if task is Task.CLASSIFY and name == "text":
        raise RecipeError(
            f"sequence classification needs labelled text; got {spec!r}, pass --data jsonl:FILE[:FIELD] "
            f"whose records carry a {tokens.LABEL_KEY!r}"
        )
    return loaders[name]()


def _text(path: str | None, encoder: tokens.Encoder | None, seq_len: int | None) -> DataBundle:
    if encoder is None:
        return text.load_text(path, seq_len)
    docs = tokens.text_documents(path) if path else [text.default_corpus().decode("utf-8", "replace")]
    where = f"text {path or '(default)'}"
    return tokens.lm_blocks("text", docs, encoder, seq_len or tokens.BLOCK_SIZE, where=where)


def _jsonl(
    path: str, encoder: tokens.Encoder | None, seq_len: int | None, task: Task | None, seed: int
) -> DataBundle:
    file, field = path, tokens.DEFAULT_FIELD
    if not Path(path).expanduser().is_file() and ":" in path:  # FILE:FIELD (a file name may hold ':')
        file, _, field = path.rpartition(":")
    byte_level = encoder is None
    enc = encoder or tokens.bytes_encoder()
    length = seq_len or (text.SEQ_LEN if byte_level else tokens.BLOCK_SIZE)
    labels = task is Task.CLASSIFY
    docs, classes = tokens.jsonl_documents(file, field, labels=labels)
    where = f"JSONL file {file} (field {field!r})"
    if labels:
        return tokens.labelled_rows("jsonl", docs, classes, enc, length, seed=seed, where=where)
    return tokens.lm_blocks("jsonl", docs, enc, length, where=where)


def _need_path(name: str, path: str | None, what: str = "DIR") -> str:
    if not path:
        kind = "a directory" if what == "DIR" else "a file"
        raise RecipeError(f"data set {name!r} needs {kind}: pass --data {name}:{what}")
    return path
