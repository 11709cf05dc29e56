"""geta in one minute: find the prunable groups of a small CNN, zero half of them, convert.

Run with ``make demo`` (or ``python examples/quickstart.py`` inside the venv). No training
happens here: the point is the zero-invariance that makes structured pruning safe. Once some
channels of a group are exactly zero, `geta.convert` removes them physically and the smaller
model computes the same outputs as the zeroed one.
"""

from __future__ import annotations

import torch
from torch import nn

import geta
import geta.testing


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    # A tiny ResNet (residual adds and a 1x1 downsample conv) with example inputs of batch 2.
    model, inputs = geta.testing.zoo.build("resnet", seed=0)

    # Analyse the model and attach weight quantizers in place.
    plan = geta.prepare(model, inputs, geta.Config(target_sparsity=0.5, weight_bits=(4, 8)))
    print(plan.summary())

    # Stand-in for training: zero half of the prunable channels at random.
    zeroed = geta.testing.zero_random_groups(plan, fraction=0.5, seed=0)
    print(f"zeroed {zeroed} of {plan.num_prunable_units} prunable units")
    with torch.no_grad():
        reference = model(*inputs)
    dense_params = count_parameters(model)

    # Physically remove the zero channels.
    small = geta.convert(model, plan)
    with torch.no_grad():
        output = small(*inputs)

    print(f"parameters: {dense_params} -> {count_parameters(small)}")
    print(f"max |difference| of outputs: {(output - reference).abs().max().item():.3g}")


if __name__ == "__main__":
    main()
