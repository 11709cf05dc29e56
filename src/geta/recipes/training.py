"""The training loop pieces used by ``geta compress``: one epoch, evaluation, learning rates.

Everything here is silent: progress goes through the ``on_batch`` callback, and an epoch can be
stopped at a batch boundary (``stop``) and resumed later from the same batch (``start``), which
gives exactly the same result because the batch order is a function of (seed, epoch).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geta.recipes.data import DataBundle, Task

__all__ = [
    "EpochStats",
    "Metrics",
    "cosine_lr",
    "distillation_loss",
    "evaluate",
    "logits_of",
    "loss_and_hits",
    "train_epoch",
]

DISTILL_TEMPERATURE = 2.0  # softens both distributions; the KL term is scaled by T² (Hinton et al.)


@dataclass
class EpochStats:
    """Running sums of one (possibly partial) training epoch."""

    loss_sum: float = 0.0  # sum of the per-batch mean losses
    hits: int = 0  # correctly predicted samples (classes) or tokens (LM)
    count: int = 0  # predicted samples or tokens
    batches: int = 0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.batches, 1)

    @property
    def accuracy(self) -> float:
        return self.hits / max(self.count, 1)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class Metrics:
    """Evaluation of a model on a data set's test split."""

    accuracy: float  # top-1 (classification) or next-token accuracy (language modelling)
    loss: float  # mean cross-entropy per sample / token

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 50.0))


def logits_of(output: object) -> Tensor:
    """The logits of a model output: a tensor, or an object/dict with ``logits`` (Hugging Face)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}")


def loss_and_hits(task: Task, logits: Tensor, y: Tensor) -> tuple[Tensor, int, int]:
    """Mean cross-entropy, correct predictions and predictions for one batch."""
    if task is Task.LM:
        logits = logits.reshape(-1, logits.shape[-1])  # (B*T, V)
        y = y.reshape(-1)  # (B*T,)
    loss = F.cross_entropy(logits, y)
    hits = int((logits.detach().argmax(-1) == y).sum())
    return loss, hits, y.numel()


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float = DISTILL_TEMPERATURE) -> Tensor:
    """T² · KL(softmax(teacher / T) || softmax(student / T)), averaged over samples (or tokens).

    Logits of shape (..., classes); the teacher's are treated as constants.
    """
    s = F.log_softmax(student.reshape(-1, student.shape[-1]) / temperature, -1)
    t = F.log_softmax(teacher.detach().reshape(-1, teacher.shape[-1]) / temperature, -1)
    return temperature**2 * F.kl_div(s, t, log_target=True, reduction="batchmean")


def train_epoch(
    model: nn.Module,
    data: DataBundle,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    device: torch.device,
    lr: Callable[[], float] | None = None,
    start: int = 0,
    stats: EpochStats | None = None,
    on_batch: Callable[[EpochStats], None] | None = None,
    stop: Callable[[], bool] | None = None,
    teacher: nn.Module | None = None,
    distill_weight: float = 1.0,
    clip_norm: float = 0.0,
    forward_context: Callable[[], AbstractContextManager[object]] | None = None,
) -> EpochStats:
    """Train ``model`` for one epoch from batch ``start``; return the epoch's running sums.

    ``lr()`` (if given) is read before every step and written into the optimizer's first param
    group. The epoch ends early, at a batch boundary, as soon as ``stop()`` returns True; the
    returned ``stats.batches`` then tells where to resume. With a ``teacher`` (the dense model,
    in eval mode) the loss adds ``distill_weight`` x `distillation_loss` of the model's logits
    against the teacher's. ``clip_norm`` > 0 clips the global gradient norm of the first param
    group (all parameters of an ordinary optimizer; the weights, not the quantizer scalars, of
    `geta.QASSO`) to that value before every step. ``forward_context`` (e.g.
    `geta.quant.recompute_quantized`) is entered around each training forward.
    """
    stats = stats if stats is not None else EpochStats()
    model.train()
    for x, y in data.batches(batch_size, seed=seed, epoch=epoch, start=start):
        if stop is not None and stop():
            break
        if lr is not None:
            optimizer.param_groups[0]["lr"] = lr()
        x, y = x.to(device), y.to(device)
        with forward_context() if forward_context is not None else contextlib.nullcontext():
            logits = logits_of(model(x))
        loss, hits, count = loss_and_hits(data.task, logits, y)
        if teacher is not None:
            with torch.no_grad():
                target = logits_of(teacher(x))
            loss = loss + distill_weight * distillation_loss(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm > 0:
            nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], clip_norm)
        optimizer.step()
        stats.loss_sum += float(loss.detach())
        stats.hits += hits
        stats.count += count
        stats.batches += 1
        if on_batch is not None:
            on_batch(stats)
    return stats


@torch.no_grad()
def evaluate(model: nn.Module, data: DataBundle, *, batch_size: int, device: torch.device) -> Metrics:
    """Accuracy and loss of ``model`` on the test split (eval mode; the mode is restored)."""
    was_training = model.training
    model.eval()
    loss_sum, hits, count = 0.0, 0, 0
    try:
        for x, y in data.batches(batch_size, train=False):
            x, y = x.to(device), y.to(device)
            loss, h, n = loss_and_hits(data.task, logits_of(model(x)), y)
            loss_sum += float(loss) * n
            hits += h
            count += n
    finally:
        model.train(was_training)
    return Metrics(accuracy=hits / max(count, 1), loss=loss_sum / max(count, 1))


def cosine_lr(step: int, total: int, base: float, *, warmup: int = 0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``base`` to 0 at ``total``.

    >>> [round(cosine_lr(s, 10, 1.0, warmup=2), 3) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(total - warmup, 1)
    t = min(max(step - warmup, 0) / span, 1.0)
    return base * 0.5 * (1.0 + math.cos(math.pi * t))
