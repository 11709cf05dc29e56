"""Package-level promises: light import, a silent library, the public API."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import subprocess
import sys

import pytest
import torch

import geta

SRC = pathlib.Path(geta.__file__).parent


def test_import_geta_does_not_import_heavy_optional_dependencies() -> None:
    code = (
        "import sys, geta, torch\n"
        "plan = geta.prepare(torch.nn.Linear(2, 2), (torch.randn(1, 2),))\n"
        "heavy = [m for m in ('transformers', 'onnx', 'onnxruntime', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_library_code_never_prints_or_configures_logging() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        if "cli" in path.relative_to(SRC).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                fn = node.func
                if isinstance(fn, ast.Name) and fn.id == "print":
                    offenders.append(f"{path}:{node.lineno} print")
                if isinstance(fn, ast.Attribute) and fn.attr == "basicConfig":
                    offenders.append(f"{path}:{node.lineno} logging.basicConfig")
    assert offenders == []


# What each public name must be: the architecture's API (design/architecture.md).
_CLASSES = {
    "Config",
    "STE",
    "Plan",
    "PruneGroup",
    "ParamSlice",
    "QASSO",
    "Schedule",
    "Stage",
    "CompressionReport",
}
_ERRORS = {
    "GetaError",
    "ConfigError",
    "CaptureError",
    "ConvertError",
    "ExportError",
    "IntegrityError",
    "UnsupportedOpError",
}
_FUNCTIONS = {
    "prepare": "geta.prepare",
    "convert": "geta.convert",
    "report": "geta.reporting.count",
    "shard": "geta.distributed",
    "full_state_dict": "geta.distributed",
    "recalibrate_norms": "geta.norm_stats",
}
_MODULES = {"export", "testing"}


def test_public_api_names() -> None:
    assert set(geta.__all__) == _CLASSES | _ERRORS | set(_FUNCTIONS) | _MODULES
    for name in _CLASSES | _ERRORS:
        assert isinstance(getattr(geta, name), type) and getattr(geta, name).__name__ == name
    for name in _ERRORS:
        assert issubclass(getattr(geta, name), geta.GetaError)
    assert issubclass(geta.QASSO, torch.optim.Optimizer)
    for name, module in _FUNCTIONS.items():
        function = getattr(geta, name)
        assert inspect.isfunction(function) and (function.__module__, function.__name__) == (module, name)
    for name in _MODULES:
        assert getattr(geta, name) is importlib.import_module(f"geta.{name}")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        geta.nope  # noqa: B018
