"""``config.yaml`` of a run names its files by absolute paths: it means the same from any directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from geta.cli.outputs import absolute_paths


def test_paths_in_the_options_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a:b.jsonl").write_text("{}\n")  # a file name holding ':' is a file, not FILE:FIELD
    given = {"model": "hf:ckpt/llama", "data": "jsonl:docs/train.jsonl:content", "dense_checkpoint": "d.pt",
             "seed": 3}  # fmt: skip
    out = absolute_paths(given)
    assert out["model"] == f"hf:{tmp_path / 'ckpt/llama'}"
    assert out["data"] == f"jsonl:{tmp_path / 'docs/train.jsonl'}:content"  # the field stays
    assert out["dense_checkpoint"] == str(tmp_path / "d.pt") and out["seed"] == 3
    assert given["model"] == "hf:ckpt/llama"  # the caller's dict is not changed
    assert absolute_paths({"data": "jsonl:a:b.jsonl"})["data"] == f"jsonl:{tmp_path / 'a:b.jsonl'}"
    for spec in ("cifar10:c10", "imagefolder:imgs", "text:corpus"):
        name, _, path = spec.partition(":")
        assert absolute_paths({"data": spec})["data"] == f"{name}:{tmp_path / path}"
    home = absolute_paths({"data": "text:~/corpus.txt"})["data"]
    assert home == f"text:{Path('~/corpus.txt').expanduser()}"


def test_specs_without_paths_are_kept() -> None:
    same = {"model": "mypkg.nets:factory", "data": "digits", "dense_checkpoint": None}
    assert absolute_paths(same) == same
    assert absolute_paths({"model": "llama", "data": "text"}) == {"model": "llama", "data": "text"}
