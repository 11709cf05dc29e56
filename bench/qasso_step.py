"""Training-step cost of QASSO vs ``torch.optim.SGD`` on the same fake-quantised model.

    python -m bench.qasso_step [--steps 12] [--batch 128] [--threads 1]

A ResNet-style CNN (CIFAR-shaped input, three stages of basic blocks with BN and residual adds)
is prepared with weight and activation quantizers, twice from the same seed: one copy trains
with ``torch.optim.SGD`` (momentum 0.9), the other with QASSO (same lr, momentum) through all
four stages. Steps alternate between the two models so that both see the same machine noise.
Each measured step is the user's whole loop body: forward, loss, ``zero_grad``, backward,
``step``. We print the median step time per stage, the optimizer-only part, and their ratios;
the last line is the headline: the worst stage's QASSO ÷ SGD ratio (target <= 1.2).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import geta
from bench.results import write_section
from geta.optim import QASSO, Schedule, Stage


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = None
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.short is None else self.short(x)))


class ResNetish(nn.Module):
    """conv 3->16, blocks 16 -> 32 (/2) -> 64 (/2), global pool, linear 64 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layers = nn.Sequential(_Block(16, 16, 1), _Block(16, 32, 2), _Block(32, 64, 2))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, 3, 16, 16)
        h = self.layers(self.stem(x))  # (batch, 64, 4, 4)
        return self.head(h.mean((2, 3)))  # (batch, 10)


def _prepared(batch: int) -> tuple[geta.Plan, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = ResNetish()
    x, y = torch.randn(batch, 3, 16, 16), torch.randint(0, 10, (batch,))
    config = geta.Config(target_sparsity=0.5, weight_bits=(4, 8), act_bits=(4, 8))
    return geta.prepare(model, (x[:2],), config), x, y


def _timed_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float]:
    """(whole step, optimizer.step() only) in seconds."""
    t0 = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    t1 = time.perf_counter()
    opt.step()
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=12, help="measured steps per stage")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.steps
    schedule = Schedule(warmup=n, projection=n, joint=n, cooldown=n, projection_periods=2, pruning_periods=2)
    plan_s, x, y = _prepared(args.batch)
    plan_q, _, _ = _prepared(args.batch)
    sgd = torch.optim.SGD(plan_s.model.parameters(), lr=0.01, momentum=0.9)
    qasso = QASSO(plan_q, lr=0.01, momentum=0.9, schedule=schedule)
    for _ in range(2):  # warm the allocator and the kernels; not counted
        _timed_step(plan_s.model, sgd, x, y)
    rows: dict[Stage, list[tuple[float, float, float, float]]] = {s: [] for s in Stage}
    for step in range(schedule.total):
        stage = schedule.stage_at(qasso.step_count)
        q_all, q_opt = _timed_step(plan_q.model, qasso, x, y)
        s_all, s_opt = _timed_step(plan_s.model, sgd, x, y)
        if step % n:  # the first step of each stage (selection, freezing) is not steady state
            rows[stage].append((q_all, s_all, q_opt, s_opt))
    lines = [
        f"ResNet-style CNN, {sum(p.numel() for p in plan_q.model.parameters())} parameters, batch "
        f"{args.batch}, {args.threads} thread(s), {plan_q.num_prunable_units} prunable units, "
        f"{len(plan_q.bindings)} quantizers; median of {n - 1} steps per stage",
        f"{'stage':<11} {'SGD step ms':>12} {'QASSO step ms':>14} {'ratio':>6} {'SGD opt ms':>11} "
        f"{'QASSO opt ms':>13} {'opt ratio':>10}",
    ]
    worst = 0.0
    for stage, got in rows.items():
        q_all, s_all, q_opt, s_opt = (statistics.median(col) * 1e3 for col in zip(*got))
        ratio = q_all / s_all
        worst = max(worst, ratio)
        lines.append(
            f"{stage.value:<11} {s_all:12.2f} {q_all:14.2f} {ratio:6.3f} {s_opt:11.3f} {q_opt:13.3f} "
            f"{q_opt / s_opt:10.2f}"
        )
    lines.append(
        f"headline: QASSO step / SGD step on the fake-quantised model (worst stage) = {worst:.3f}  "
        f"(target <= 1.2)"
    )
    print("\n".join(lines))
    write_section("QASSO step cost", lines)


if __name__ == "__main__":
    main()
