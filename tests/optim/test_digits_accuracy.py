"""Accuracy acceptance: a residual CNN on scikit-learn digits, GETA vs dense, after `convert`.

Sparsity 0.5, weights and activations quantized to (4, 8) bits; the converted model must be
within 2 points of the dense model trained with the same budget (30 epochs, SGD with momentum,
cosine learning rate for both). About 30 s of CPU: part of ``make test`` (CI runs only that).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

EPOCHS = 30
BATCH = 64


class ResCNN(nn.Module):
    """conv 1->32, one residual block at 32, conv 32->64 (/2), global pool, linear 64->10."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.conv1, self.bn1 = nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.down = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, 1, 8, 8)
        h = self.stem(x)  # (batch, 32, 8, 8)
        h = F.relu(h + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(h))))))  # residual add
        return self.head(self.down(h).mean((2, 3)))  # (batch, 64, 4, 4) -> (batch, 10)


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    cut = int(0.8 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def train(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(1)
    lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS * (len(y) // BATCH))
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y) - BATCH + 1, BATCH):  # drop the last partial batch
            idx = perm[i : i + BATCH]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            lr.step()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def test_geta_within_two_points_of_dense() -> None:
    import geta

    x_tr, y_tr, x_te, y_te = digits()
    steps_per_epoch = len(y_tr) // BATCH
    torch.manual_seed(0)
    dense = ResCNN()
    train(dense, torch.optim.SGD(dense.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4), x_tr, y_tr)
    dense_acc = accuracy(dense, x_te, y_te)

    torch.manual_seed(0)
    model = ResCNN()
    config = geta.Config(target_sparsity=0.5, weight_bits=(4, 8), act_bits=(4, 8))
    plan = geta.prepare(model, (x_tr[:2],), config)
    schedule = geta.Schedule.from_epochs(  # one projection / pruning period per epoch
        steps_per_epoch=steps_per_epoch, warmup=2, projection=6, joint=8, cooldown=EPOCHS - 16
    )
    opt = geta.QASSO(
        plan, lr=0.05, lr_quant=1e-3, momentum=0.9, weight_decay=1e-4, schedule=schedule, grad_clip=1.0
    )
    train(model, opt, x_tr, y_tr)
    assert plan.group_sparsity() == pytest.approx(0.5, abs=1 / plan.num_prunable_units)
    small = geta.convert(model, plan)
    geta_acc = accuracy(small, x_te, y_te)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    for b in plan.bindings:
        assert 4 <= round(b.quantizer.bit_width) <= 8
    assert geta_acc >= dense_acc - 0.02, (geta_acc, dense_acc)
