"""Shared pytest setup for geta's test suite.

- One torch thread: the suite runs on small shared CPUs, where extra threads only contend.
- Every test starts from ``torch.manual_seed(0)`` so that a failure reproduces exactly.
- ``--regen-ref-data`` rewrites golden reference files (e.g. group listings) instead of
  comparing against them; tests read it through the ``regen_ref_data`` fixture.
- Tests marked ``ddp`` are skipped where ``torch.distributed`` is unavailable.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regen-ref-data",
        action="store_true",
        default=False,
        help="rewrite golden reference files instead of comparing against them",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.distributed.is_available():
        return
    skip = pytest.mark.skip(reason="torch.distributed is not available in this torch build")
    for item in items:
        if "ddp" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    torch.manual_seed(0)


@pytest.fixture
def regen_ref_data(request: pytest.FixtureRequest) -> bool:
    """True when the run was asked to rewrite golden reference data."""
    return bool(request.config.getoption("--regen-ref-data"))
