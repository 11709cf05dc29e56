"""Eager vs ``torch.compile`` training steps, float vs geta (weights + activations, QASSO).

Part of ``make bench-qasso`` (`bench.qasso_step` calls `measure_compile` per model). Six copies
of the model from the same seed train side by side, one step of each per round:

- ``float eager`` / ``float compiled``: the model without quantizers, ``torch.optim.SGD``;
- ``geta eager`` / ``geta compiled``: prepared with weight and activation quantizers, QASSO
  (SGD variant) in its joint stage; ``geta fixed t ...`` the same with ``learn_exponent=False``
  (each quantizer's exponent fixed at 1: no ``pow`` and no ``log`` per element); QASSO's
  joint stage: selection, forgetting, bit pinning. In the warm-up and
  projection stages QASSO's default bit rule hooks every quantizer to measure sensitivity, and
  those tensor hooks break the compiled graph at each quantizer; from the joint stage on the
  model is one graph;
- ``geta plain eager``: ``geta eager`` with the fused CPU kernels of the eager op off
  (`geta.quant.kernels`, ``GETA_FUSED_KERNELS=0``): the plain implementation, one ATen op per
  elementwise pass and ``pow`` for a learned exponent.

Under ``torch.compile`` geta's fake-quantizers are plain ops that inductor fuses
(`geta.quant.fusable`). Compilation (the first steps) is not timed. A step is the user's whole
loop body: forward, loss, ``zero_grad``, backward, ``step``. Ratios are paired per round.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable

import torch

import geta
from geta.optim import QASSO, Schedule
from geta.quant.kernels import use_fused_kernels

__all__ = ["measure_compile"]

WARM = 3  # untimed rounds: compilation and the allocator


def _quartiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4, method="inclusive")
    return f"{statistics.median(values):5.3f} [{q[0]:.3f}-{q[2]:.3f}]"


def _step(task, model: Callable, opt: torch.optim.Optimizer, fused: bool = True) -> None:
    with use_fused_kernels(fused):
        loss = task.loss(model, task.batch)
        opt.zero_grad()
        loss.backward()
        opt.step()


VARIANTS = {"geta": True, "geta fixed t": False}  # label -> learn_exponent


def measure_compile(task, steps: int, clock: Callable[[], float]) -> tuple[list[str], dict[str, float]]:
    """The lines of one model's table, and its median ratios (geta ÷ float, eager and compiled;
    ``fixed t ...``: the same with the quantizers' exponent fixed at 1, ``learn_exponent=False``)."""
    # joint stage from the first step, taken in eager mode: the bit allocation is final there
    # and its sensitivity hooks (a tensor hook per quantizer, which break a compiled graph) go
    schedule = Schedule(joint=steps + WARM + 1, cooldown=1, pruning_periods=1)
    torch._dynamo.reset()  # nothing compiled for an earlier model counts against this one's limits
    runs: dict[str, tuple[Callable, torch.optim.Optimizer]] = {}
    for compiled in (False, True):
        mode = "compiled" if compiled else "eager"
        dense = copy.deepcopy(task.model)
        opt: torch.optim.Optimizer = torch.optim.SGD(dense.parameters(), lr=0.01, momentum=0.9)
        runs[f"float {mode}"] = (torch.compile(dense) if compiled else dense, opt)
        for label, learn in VARIANTS.items():
            config = geta.Config(
                target_sparsity=0.5, weight_bits=(4, 8), act_bits=(4, 8), learn_exponent=learn
            )
            plan = geta.prepare(copy.deepcopy(task.model), task.example, config)
            opt = QASSO(plan, lr=0.01, momentum=0.9, schedule=schedule)
            _step(task, plan.model, opt)  # eager: the final allocation drops the sensitivity hooks
            runs[f"{label} {mode}"] = (torch.compile(plan.model) if compiled else plan.model, opt)
    plain = geta.prepare(copy.deepcopy(task.model), task.example, geta.Config(
        target_sparsity=0.5, weight_bits=(4, 8), act_bits=(4, 8)))  # fmt: skip
    opt = QASSO(plain, lr=0.01, momentum=0.9, schedule=schedule)
    _step(task, plain.model, opt, fused=False)
    runs["geta plain eager"] = (plain.model, opt)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rnd in range(WARM + steps):
        for label, (model, opt) in runs.items():
            t0 = clock()
            _step(task, model, opt, fused=label != "geta plain eager")
            if rnd >= WARM:
                times[label].append(clock() - t0)

    def over(a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(times[a], times[b])]

    ratio = {
        "eager": over("geta eager", "float eager"),
        "plain eager": over("geta plain eager", "float eager"),
        "compiled": over("geta compiled", "float compiled"),
        "fixed t eager": over("geta fixed t eager", "float eager"),
        "fixed t compiled": over("geta fixed t compiled", "float compiled"),
        "float speed-up": over("float eager", "float compiled"),
        "geta speed-up": over("geta eager", "geta compiled"),
    }
    lines = [
        f"{task.name}: eager vs torch.compile (inductor), {steps} rounds after {WARM} untimed",
        "  " + ", ".join(f"{k} {statistics.median(v) * 1e3:.2f} ms" for k, v in times.items()),
        f"  geta ÷ float, eager:    {_quartiles(ratio['eager'])} (target <= 1.8)",
        f"  the same without the fused kernels (plain op): {_quartiles(ratio['plain eager'])}",
        f"  geta ÷ float, compiled: {_quartiles(ratio['compiled'])} (target <= 1.3)",
        f"  exponent fixed at 1 (learn_exponent=False): eager {_quartiles(ratio['fixed t eager'])}, "
        f"compiled {_quartiles(ratio['fixed t compiled'])}",
        f"  eager ÷ compiled: float {_quartiles(ratio['float speed-up'])}, "
        f"geta {_quartiles(ratio['geta speed-up'])}",
    ]
    return lines, {k: statistics.median(v) for k, v in ratio.items()}
