"""``geta env``: versions of geta and what it runs with, to paste into bug reports."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
from typing import Any

__all__ = ["add_parser", "run", "environment"]

_PACKAGES = (
    "torch",
    "transformers",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "numpy",
    "scikit-learn",
    "matplotlib",
    "Pillow",
    "PyYAML",
    "tqdm",
)


def add_parser(subparsers: Any) -> None:
    """Register ``geta env``."""
    p = subparsers.add_parser(
        "env", help="print versions of python, torch, geta and friends (for bug reports)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str | bool | int]:
    """Versions and platform facts (strings), CUDA availability (bool) and torch threads (int).

    Optional packages are looked up without importing them.
    """
    import torch

    import geta

    info: dict[str, str | bool | int] = {
        "geta": geta.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "machine": platform.machine(),
    }  # fmt: skip
    info.update({name: _version(name) for name in _PACKAGES})
    info["torch"] = torch.__version__
    info["cuda"] = torch.version.cuda or "none"
    info["cuda available"] = torch.cuda.is_available()
    info["threads"] = torch.get_num_threads()
    return info


def run(args: argparse.Namespace) -> int:
    """Print `environment` as aligned lines (or JSON)."""
    info = environment()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {'yes' if value is True else 'no' if value is False else value}")
    return 0
