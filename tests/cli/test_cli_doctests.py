"""The docstring examples of the CLI and recipe modules (they document the behaviour)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "geta.recipes.data",
    "geta.recipes.text",
    "geta.recipes.models",
    "geta.recipes.training",
    "geta.cli.options",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
