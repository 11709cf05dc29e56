"""Activation calibration in `prepare` sees the float model (docs/method.md §1.4), on every zoo model.

The reference is the slow obvious one: a deep copy of the float model, forward hooks on the
same layers, max|x| of each layer's first input. The prepared model's input quantizers must
start at those peaks. (Weights are quantized at ``init_bits`` = 16 while calibrating, so the
comparison allows 1e-3 relative.)
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import geta
from geta.plan import QuantTarget
from geta.testing import ZOO, zoo


def _float_peaks(model: nn.Module, layers: dict[str, nn.Module], inputs: object) -> dict[str, float]:
    peaks: dict[str, float] = {}

    def hook(name: str):
        def record(_: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor) and args[0].numel():
                peaks[name] = max(peaks.get(name, 0.0), float(args[0].detach().abs().amax()))

        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    model.eval()
    with torch.no_grad():
        model(**inputs) if isinstance(inputs, dict) else model(*inputs)
    for h in handles:
        h.remove()
    return peaks


@pytest.mark.parametrize("name", [n for n in ZOO if ZOO[n].available])
def test_input_ranges_are_the_float_models_peaks(name: str) -> None:
    model, inputs = zoo.build(name)
    reference = copy.deepcopy(model)
    plan = geta.prepare(model, inputs, geta.Config(weight_bits=(4, 8), act_bits=(4, 8)))
    names = {m: n for n, m in model.named_modules()}
    ref_modules = dict(reference.named_modules())
    layers = {
        names[b.module]: ref_modules[names[b.module]]
        for b in plan.bindings
        if b.target is QuantTarget.INPUT and b.name.endswith(".input") and names.get(b.module) in ref_modules
    }
    peaks = _float_peaks(reference, layers, inputs)
    checked = 0
    for b in plan.bindings:
        layer_name = names.get(b.module)
        if b.target is not QuantTarget.INPUT or not b.name.endswith(".input") or layer_name not in peaks:
            continue
        expected = peaks[layer_name] if b.quantizer.signed else None
        if expected is None or expected <= 0:
            continue  # unsigned quantizers clip at the largest non-negative value instead
        got = float(b.quantizer.qmax.detach())
        assert got == pytest.approx(expected, rel=1e-3), f"{b.name}: q_m {got} vs float peak {expected}"
        checked += 1
    if not checked:
        pytest.skip(f"{name}: no signed layer input quantizers")
