"""Run the docstring examples of every module of geta (they are part of the documentation).

The modules are discovered, not listed: a new module's examples run without anyone adding it
here. A module whose optional dependency is missing (e.g. onnx) is skipped with the reason.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import geta

SRC = Path(geta.__file__).parent


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages([str(SRC)], prefix="geta."):
        relative = info.name.split(".")[1:]
        path = SRC.joinpath(*relative)
        source = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
        if ">>>" in source.read_text(encoding="utf-8"):
            names.append(info.name)
    return sorted(names)


MODULES = _modules_with_examples()


def test_discovery_finds_the_documented_modules() -> None:
    assert "geta.config" in MODULES and "geta.optim.quota" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # an optional extra that is not installed
        pytest.skip(f"{name} needs {exc.name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
