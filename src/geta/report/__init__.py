"""Measure a compressed model: MACs, bit widths, BOPs and sizes per layer (method.md §4).

- `report(model, example_inputs, dense=None)` -> `CompressionReport` (``geta.report``);
- `geta.report.macs`: the per-op MAC table (`MAC_RULES`, extend with `register_mac_rule`);
- `geta.report.model`: the `LayerReport` / `CompressionReport` data classes.

>>> import torch
>>> from geta.report import report
>>> conv = torch.nn.Conv2d(3, 8, 3, padding=1)
>>> r = report(conv, (torch.randn(1, 3, 4, 4),))
>>> r.layers[0].macs == 1 * 3 * 8 * 3 * 3 * 4 * 4, r.layers[0].weight_bits
(True, 32)
"""

from __future__ import annotations

import sys
import types
from typing import Any

from geta.report.count import dtype_bits, report, rounded_bits
from geta.report.macs import MAC_RULES, MacRule, mac_rule, register_mac_rule
from geta.report.model import CompressionReport, LayerReport

__all__ = [
    "MAC_RULES",
    "CompressionReport",
    "LayerReport",
    "MacRule",
    "dtype_bits",
    "mac_rule",
    "register_mac_rule",
    "report",
    "rounded_bits",
]


class _CallableModule(types.ModuleType):
    """``geta.report`` is both this package and the `report` function.

    Importing a submodule binds the package object as the attribute ``geta.report`` (e.g.
    ``from geta.report import CompressionReport`` run before ``geta.report`` was first read), so
    the package itself must be callable for ``geta.report(model, inputs)`` to keep working.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> CompressionReport:
        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
