"""The README's API example as a script: prepare, train with QASSO, convert, report, export.

Run with ``python examples/api.py`` inside the venv (about half a minute on two CPU cores).
The model is a small MLP on synthetic data (Gaussian clusters, so the script needs nothing but
torch); the loop runs every epoch of the schedule, so that QASSO reaches its target sparsity
and `geta.convert` really removes units. `geta.report` of the converted model is relative to
the original model: `geta.prepare` recorded its MACs and parameter count (counts only), and
the converted module carries them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import geta


def clusters(n: int, seed: int) -> TensorDataset:
    """``n`` points in 16 dimensions around 4 fixed centres (the class is the centre)."""
    centres = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)) * 2
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=gen)
    return TensorDataset(centres[y] + torch.randn(n, 16, generator=gen), y)


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset) -> float:
    x, y = data.tensors
    return float((model(x).argmax(-1) == y).float().mean())


def main() -> None:
    torch.manual_seed(0)
    loader = DataLoader(clusters(512, seed=1), batch_size=32, shuffle=True)
    test = clusters(256, seed=2)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    example_inputs = (test.tensors[0][:8],)

    # --- the README's example from here on ---------------------------------------------------
    # fmt: off
    plan = geta.prepare(model, example_inputs, geta.Config(   # inserts quantizers in place
        target_bops=0.01, weight_bits=(2, 8), act_bits=(2, 8)))   # widths + bits under 1 % of the BOPs
    print(plan.summary())                        # groups, sizes, prunable or the reason not
    stages = dict(warmup=1, projection=2, joint=3, cooldown=4)     # epochs of the four stages
    opt = geta.QASSO(plan, lr=0.1, lr_quant=1e-4, variant="sgd", momentum=0.9,
                     schedule=geta.Schedule.from_epochs(steps_per_epoch=len(loader), **stages))
    for _ in range(sum(stages.values())):       # every epoch of the schedule
        for x, y in loader:                      # the user's ordinary loop
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    geta.recalibrate_norms(model, (x for x, _ in loader), max_batches=20)  # fresh BatchNorm statistics
    small = geta.convert(model, plan)            # compressed module, same outputs as the zeroed model
    print(geta.report(small, example_inputs).to_markdown())   # relative to the original model
    with tempfile.TemporaryDirectory() as out:
        geta.export.onnx(small, example_inputs, Path(out) / "model.onnx")  # QDQ graph, onnxruntime
        geta.export.packed(small, Path(out) / "model.geta")                # real low-bit storage
    # fmt: on
    # --- end of the README's example ----------------------------------------------------------

    print(f"group sparsity {plan.group_sparsity():.2f}; test accuracy {accuracy(small, test):.2%}")


if __name__ == "__main__":
    main()
