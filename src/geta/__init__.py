"""geta: joint structured pruning and mixed-precision quantization-aware training.

>>> import geta
>>> config = geta.Config(target_sparsity=0.5, weight_bits=(4, 8))
>>> plan = geta.prepare(model, example_inputs, config)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from geta.config import STE, Config
from geta.convert import convert
from geta.errors import (
    CaptureError,
    ConfigError,
    ConvertError,
    ExportError,
    GetaError,
    IntegrityError,
    UnsupportedOpError,
)
from geta.graph.prune_group import ParamSlice, PruneGroup
from geta.norm_stats import recalibrate_norms
from geta.plan import Plan
from geta.prepare import prepare

__version__ = "0.1.0"

__all__ = [
    "Config",
    "STE",
    "Plan",
    "PruneGroup",
    "ParamSlice",
    "prepare",
    "convert",
    "recalibrate_norms",
    "shard",
    "full_state_dict",
    "QASSO",
    "Schedule",
    "Stage",
    "report",
    "CompressionReport",
    "export",
    "testing",
    "GetaError",
    "ConfigError",
    "CaptureError",
    "ConvertError",
    "ExportError",
    "IntegrityError",
    "UnsupportedOpError",
]

_LAZY = {
    "QASSO": ("geta.optim", "QASSO"),
    "Schedule": ("geta.optim", "Schedule"),
    "Stage": ("geta.optim", "Stage"),
    "report": ("geta.reporting", "report"),
    "CompressionReport": ("geta.reporting", "CompressionReport"),
    "export": ("geta.export", None),
    "testing": ("geta.testing", None),
    "shard": ("geta.distributed", "shard"),
    "full_state_dict": ("geta.distributed", "full_state_dict"),
}


def __getattr__(name: str) -> Any:
    """Import the optimizer, reports, exports and test helpers on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'geta' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
