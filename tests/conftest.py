"""Shared pytest setup for geta's test suite.

- One torch thread: the suite runs on small shared CPUs, where extra threads only contend.
- Every test starts from ``torch.manual_seed(0)`` so that a failure reproduces exactly.
- ``--regen-ref-data`` rewrites golden reference files (e.g. group listings) instead of
  comparing against them; tests read it through the ``regen_ref_data`` fixture.
- Tests marked ``ddp`` are skipped where ``torch.distributed`` is unavailable.
- ``--device`` (default ``cpu``) is the device of the ``device`` fixture. Every test that takes
  that fixture runs on any device and is marked ``device``; ``make test-gpu`` runs exactly those
  with ``--device cuda`` (``pytest -m device --device cuda``). A device torch cannot use skips them.
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
    parser.addoption(
        "--device",
        default="cpu",
        help="torch device of the tests that take the `device` fixture (cpu, cuda, cuda:1, ...)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)
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


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    """The ``--device`` of this run; the test is skipped where torch cannot use it."""
    dev = torch.device(request.config.getoption("--device"))
    if dev.type != "cpu":
        module = getattr(torch, dev.type, None)
        if module is None or not module.is_available():
            pytest.skip(f"--device {dev} is not available in this torch build / machine")
    return dev
