"""Run the docstring examples of the public modules (they are part of the documentation)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "geta.config",
    "geta.prepare",
    "geta.subnet",
    "geta.optim.quota",
    "geta.ops.registry",
    "geta.testing",
    "geta.testing.invariance",
    "geta.quant.functional",
    "geta.quant.quantizer",
    "geta.quant.attach",
    "geta.reporting",
    "geta.reporting.count",
    "geta.reporting.macs",
    "geta.reporting.model",
    "geta.export.bitpack",
    "geta.export.interface",
    "geta.export.qdq",
    "geta.recipes.data",
    "geta.recipes.text",
    "geta.recipes.tokens",
    "geta.recipes.defaults",
    "geta.recipes.schedules",
    "geta.recipes.models",
    "geta.recipes.training",
    "geta.cli.options",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
