"""QASSO under DistributedDataParallel: 2 processes, gloo on CPU, identical results per rank."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.ddp
@pytest.mark.timeout(120)
def test_two_ranks_end_identical(tmp_path: Path) -> None:
    import optim_ddp_worker  # on sys.path via conftest; spawned children inherit the path

    torch.multiprocessing.spawn(
        optim_ddp_worker.run, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True
    )
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["params"].keys() == r1["params"].keys()
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), name
    assert torch.equal(r0["committed"], r1["committed"])
    assert int(r0["committed"].sum()) == 5  # half of the 10 prunable channels
    for a, b in zip(r0["zero_groups"], r1["zero_groups"], strict=True):
        assert torch.equal(a, b)
    assert r0["bits"] == r1["bits"]
