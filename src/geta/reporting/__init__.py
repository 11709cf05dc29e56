"""Measure a compressed model: MACs, bit widths, BOPs and sizes per layer (docs/method.md §4).

- `report(model, example_inputs, dense=None)` -> `CompressionReport` (also ``geta.report``);
- `mac_rule(op)`: the `MacRule` an op declares with its handler (``register_op(..., macs=...)``,
  `geta.ops.registry`; the shared rules are in `geta.ops.macs`);
- `geta.reporting.model`: the `LayerReport` / `CompressionReport` / `DenseCounts` data classes;
- `dense_counts`: the counts `geta.prepare` records of the original model.

>>> import torch
>>> from geta.reporting import report
>>> conv = torch.nn.Conv2d(3, 8, 3, padding=1)
>>> r = report(conv, (torch.randn(1, 3, 4, 4),))
>>> r.layers[0].macs == 1 * 3 * 8 * 3 * 3 * 4 * 4, r.layers[0].weight_bits
(True, 32)
"""

from __future__ import annotations

from geta.ops.macs import MacRule
from geta.ops.registry import mac_rule
from geta.reporting.count import dense_counts, dtype_bits, report, rounded_bits
from geta.reporting.model import CompressionReport, DenseCounts, LayerReport

__all__ = [
    "CompressionReport",
    "DenseCounts",
    "LayerReport",
    "MacRule",
    "dense_counts",
    "dtype_bits",
    "mac_rule",
    "report",
    "rounded_bits",
]
