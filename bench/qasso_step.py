"""Training-step cost of QASSO vs ``torch.optim`` on the same fake-quantised model.

    python -m bench.qasso_step [--steps 32] [--threads 1] [--models cnn,llama]

Two models: a ResNet-style CNN (CIFAR-shaped 16x16 input, three stages of basic blocks with BN
and residual adds) at batch 128, and a small Llama-style transformer (``transformers``
LlamaConfig, random weights: hidden 128, 2 layers, 4 query / 2 key-value heads, sequence 64,
batch 8, causal-LM loss). Per model, six copies from the same seed train side by side:

- ``float + SGD``: the model without quantizers, ``torch.optim.SGD`` (momentum 0.9);
- ``fq + SGD`` / ``fq + AdamW``: prepared with weight and activation quantizers, ``torch.optim``;
- ``fq + QASSO-sgd`` / ``fq + QASSO-adamw``: the same prepared model with QASSO through all
  four stages (``steps`` steps each, two projection and two pruning periods);
- ``fq + QASSO-sgd P=1``: the same with one projection period (`Schedule`'s default), where
  the bit allocation is redone at every projection step.

Steps are interleaved (one step of every copy per round), so all copies see the same machine
noise. Each measured step is the user's whole loop body: forward, loss, ``zero_grad``,
backward, ``step``; the optimizer's ``step()`` is also timed alone (``--clock cpu``, the
default: CPU time of the main thread, which with one torch thread is the step's time on an
idle machine and is barely moved by other processes on a shared one). The first step of each
stage (selection, allocation) is not counted. Ratios are per round (paired) and quoted as the
median with the 25th-75th percentile spread. The last line is the headline: the worst stage's
QASSO ÷ torch ratio on the fake-quant model for the whole step (target <= 1.03) and for the
optimizer step alone (target <= 2), and fake-quant ÷ float.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import geta
from bench.compile_step import measure_compile
from bench.results import machine, write_section
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


@dataclass
class Task:
    """A model, its example inputs for `geta.prepare`, one batch and the loss of a forward."""

    name: str
    model: nn.Module
    example: Any
    batch: Any
    loss: Callable[[nn.Module, Any], torch.Tensor]


def cnn_task(batch: int = 128) -> Task:
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 16, 16), torch.randint(0, 10, (batch,))
    return Task(
        f"ResNet-style CNN, batch {batch}, 16x16",
        ResNetish(),
        (x[:2],),
        (x, y),
        lambda m, b: F.cross_entropy(m(b[0]), b[1]),
    )


def llama_task(batch: int = 8, seq: int = 64) -> Task:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=seq,
        use_cache=False, tie_word_embeddings=False, attn_implementation="eager",
    )  # fmt: skip
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    return Task(
        f"Llama-style transformer (hidden 128, 2 layers, GQA 4/2), batch {batch}, seq {seq}",
        LlamaForCausalLM(cfg),
        {"input_ids": ids[:2]},
        ids,
        lambda m, b: m(input_ids=b, labels=b).loss,
    )


@dataclass
class Run:
    """One copy of the model with its optimizer and its timings per stage."""

    label: str
    model: nn.Module
    opt: torch.optim.Optimizer
    whole: dict[Stage, list[float]] = field(default_factory=lambda: {s: [] for s in Stage})
    alone: dict[Stage, list[float]] = field(default_factory=lambda: {s: [] for s in Stage})

    def step(self, task: Task, clock: Callable[[], float]) -> tuple[float, float]:
        """(whole step, optimizer.step() alone) in seconds of ``clock``."""
        t0 = clock()
        loss = task.loss(self.model, task.batch)
        self.opt.zero_grad()
        loss.backward()
        t1 = clock()
        self.opt.step()
        t2 = clock()
        return t2 - t0, t2 - t1


def _runs(task: Task, schedule: Schedule) -> list[Run]:
    config = geta.Config(target_sparsity=0.5, weight_bits=(4, 8), act_bits=(4, 8))
    dense = copy.deepcopy(task.model)

    def prepared() -> nn.Module:
        return geta.prepare(copy.deepcopy(task.model), task.example, config).model

    def qasso(variant: str, sched: Schedule = schedule, label: str = "") -> Run:
        plan = geta.prepare(copy.deepcopy(task.model), task.example, config)
        kw = dict(momentum=0.9) if variant == "sgd" else dict(weight_decay=0.01)
        return Run(
            f"fq + QASSO-{variant}{label}",
            plan.model,
            QASSO(plan, lr=0.01, schedule=sched, variant=variant, **kw),
        )

    runs = [Run("float + SGD", dense, torch.optim.SGD(dense.parameters(), lr=0.01, momentum=0.9))]
    m = prepared()
    runs.append(Run("fq + SGD", m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)))
    m = prepared()
    runs.append(Run("fq + AdamW", m, torch.optim.AdamW(m.parameters(), lr=0.01, weight_decay=0.01)))
    one_period = dataclasses.replace(schedule, projection_periods=1)  # Schedule's default
    return [*runs, qasso("sgd"), qasso("adamw"), qasso("sgd", one_period, " P=1")]


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def _paired(a: list[float], b: list[float]) -> tuple[float, str]:
    """The median of the per-round ratios a/b, and it with its spread as text."""
    lo, mid, hi = _quartiles([x / y for x, y in zip(a, b, strict=True)])
    return mid, f"{mid:5.3f} [{lo:.3f}-{hi:.3f}]"


def measure(task: Task, steps: int, clock: Callable[[], float]) -> tuple[list[str], dict[str, float]]:
    """The table of one model and its worst ratios: whole step, optimizer alone, fq ÷ float."""
    schedule = Schedule(
        warmup=steps, projection=steps, joint=steps, cooldown=steps, projection_periods=2, pruning_periods=2
    )
    runs = _runs(task, schedule)
    qasso = runs[3].opt  # QASSO-sgd: its step count is the round
    assert isinstance(qasso, QASSO)
    for run in runs[:3]:  # warm the allocator and the kernels; not counted
        run.step(task, clock)
    first = {schedule.projection_start, schedule.joint_start, schedule.cooldown_start, 0}
    for rnd in range(schedule.total):
        stage = schedule.stage_at(rnd)
        for run in runs:
            whole, alone = run.step(task, clock)
            if rnd not in first:
                run.whole[stage].append(whole)
                run.alone[stage].append(alone)
    assert qasso.step_count == schedule.total
    float_sgd, fq_sgd, fq_adamw, q_sgd, q_adamw, q_sgd1 = runs
    n_params = sum(p.numel() for p in fq_sgd.model.parameters())
    lines = [
        f"{task.name}: {n_params:,} parameters (with quantizer scalars), {len(qasso.table)} "
        f"quantizers, {qasso.layout.num_units} prunable units; {steps - 1} steps per stage",
        "median ms per step; ratio = median of per-round ratios [25th-75th percentile]",
        f"{'run':<20} {'stage':<11} {'step ms':>8} {'opt ms':>7}  {'step ratio vs torch':<22} "
        f"{'opt ratio vs torch':<22}",
    ]
    for run in (float_sgd, fq_sgd, fq_adamw):
        whole = [t for s in Stage for t in run.whole[s]]
        alone = [t for s in Stage for t in run.alone[s]]
        lines.append(
            f"{run.label:<20} {'(all)':<11} {statistics.median(whole) * 1e3:8.2f} "
            f"{statistics.median(alone) * 1e3:7.3f}"
        )
    worst = {"step": 0.0, "opt": 0.0}
    for run, base in ((q_sgd, fq_sgd), (q_adamw, fq_adamw), (q_sgd1, fq_sgd)):
        for stage in Stage:
            w, a = run.whole[stage], run.alone[stage]
            step_mid, step_r = _paired(w, base.whole[stage])
            opt_mid, opt_r = _paired(a, base.alone[stage])
            worst["step"] = max(worst["step"], step_mid)
            worst["opt"] = max(worst["opt"], opt_mid)
            lines.append(
                f"{run.label:<20} {stage.value:<11} {statistics.median(w) * 1e3:8.2f} "
                f"{statistics.median(a) * 1e3:7.3f}  {step_r:<22} {opt_r:<22}"
            )
    fq = [t for s in Stage for t in fq_sgd.whole[s]]
    fl = [t for s in Stage for t in float_sgd.whole[s]]
    worst["fq"], text = _paired(fq, fl)
    lines.append(f"fake-quant ÷ float (whole step, SGD): {text}")
    return lines, worst


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=32, help="steps per stage (the first is not counted)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="cnn,llama", help="comma-separated: cnn, llama")
    parser.add_argument(
        "--compile-steps", type=int, default=16, help="timed rounds of the eager/compiled table (0: skip it)"
    )
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu: the main thread's CPU time (default; with 1 thread it is the step's time on an "
        "idle machine, and other processes on a shared one barely move it); wall: perf_counter",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    tasks = {"cnn": cnn_task, "llama": llama_task}
    lines = [
        machine(),
        f"{args.threads} torch thread(s), {args.clock} clock; QASSO ratios are vs the same torch optimizer",
    ]
    worst: dict[str, dict[str, float]] = {}
    compiled: dict[str, dict[str, float]] = {}
    for key in args.models.split(","):
        table, worst[key] = measure(tasks[key](), args.steps, clock)
        lines += ["", *table]
        print("\n".join(table), flush=True)
        if args.compile_steps > 0:
            table, compiled[key] = measure_compile(tasks[key](), args.compile_steps, clock)
            lines += ["", *table]
            print("\n".join(table), flush=True)
    step = max(w["step"] for w in worst.values())
    opt = max(w["opt"] for w in worst.values())
    fq = ", ".join(f"{k} {w['fq']:.2f}" for k, w in worst.items())
    lines.append("")
    lines.append(
        f"headline: QASSO ÷ torch on the fake-quant model, worst stage and model: whole step "
        f"{step:.3f} (target <= 1.03), optimizer step alone {opt:.2f} (target <= 2); "
        f"fake-quant ÷ float {fq}"
    )
    if compiled:
        lines.append(
            "headline: geta (W+A, QASSO joint stage) ÷ float (SGD) training step: "
            + "; ".join(f"{k} eager {r['eager']:.2f} (target <= 1.8; {r['plain eager']:.2f} without the "
                        f"fused kernels), compiled {r['compiled']:.2f} (target <= 1.3)"
                        for k, r in compiled.items())
        )  # fmt: skip
        lines.append(
            "headline: the same with the exponent fixed at 1 (learn_exponent=False): "
            + "; ".join(f"{k} eager {r['fixed t eager']:.2f}, compiled {r['fixed t compiled']:.2f}"
                        for k, r in compiled.items())
        )  # fmt: skip
    print(lines[0])
    print("\n".join(line for line in lines if line.startswith("headline")))
    write_section("QASSO step cost", lines)


if __name__ == "__main__":
    main()
