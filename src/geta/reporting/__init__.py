"""Measure a compressed model: MACs, bit widths, BOPs and sizes per layer (method.md §4).

- `report(model, example_inputs, dense=None)` -> `CompressionReport` (also ``geta.report``);
- `geta.reporting.macs`: the per-op MAC table (`MAC_RULES`, extend with `register_mac_rule`);
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

from geta.reporting.count import dense_counts, dtype_bits, report, rounded_bits
from geta.reporting.macs import MAC_RULES, MacRule, mac_rule, register_mac_rule
from geta.reporting.model import CompressionReport, DenseCounts, LayerReport

__all__ = [
    "MAC_RULES",
    "CompressionReport",
    "DenseCounts",
    "LayerReport",
    "MacRule",
    "dense_counts",
    "dtype_bits",
    "mac_rule",
    "register_mac_rule",
    "report",
    "rounded_bits",
]
