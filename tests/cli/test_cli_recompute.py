"""``geta compress`` recomputes the fake-quant outputs in the backward by default (less memory, the
same run bit for bit); ``--no-recompute-quantized`` keeps them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from geta.cli.options import CompressOptions
from geta.quant import recompute as recompute_module
from geta.quant import recompute_quantized

from .conftest import TINY, Result


def test_recompute_flag_parses() -> None:
    assert (
        CompressOptions.from_mapping({"recompute_quantized": "false"}, where=str).recompute_quantized is False
    )
    assert CompressOptions().recompute_quantized is True


def test_recomputed_run_equals_the_plain_run(
    tmp_path: Path, geta_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recomputed fake-quant values are the kept ones bit for bit, so the trained weights are;
    the default really wraps the compression phase's forwards (and --no-recompute-quantized not)."""
    entered: list[int] = []

    @contextlib.contextmanager
    def counting() -> Iterator[None]:
        entered.append(1)
        with recompute_quantized():
            yield

    monkeypatch.setattr(recompute_module, "recompute_quantized", counting)
    states, counts = [], []
    for extra in (["--no-recompute-quantized"], []):
        out = tmp_path / ("plain" if extra else "recompute")
        assert geta_cli("compress", "--out", out, "--act-bits", "4,8", *TINY, *extra).code == 0
        model = torch.load(out / "compressed.pt", weights_only=False)
        states.append(model.state_dict())
        counts.append(len(entered))
    assert counts[0] == 0 and counts[1] > 0  # one per training forward of the compression phase
    plain, recomputed = states
    assert plain.keys() == recomputed.keys() and len(plain) > 0
    assert all(torch.equal(plain[k], recomputed[k]) for k in plain)
