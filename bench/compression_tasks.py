"""Tasks of the compression benchmark: offline data, small models, one training loop for all.

- ``digits``: scikit-learn's 8x8 digits (1797 images), a residual CNN (conv 1->32, one basic
  block at 32 channels, a strided conv 32->64, global pool, linear 64->10);
- ``mnist1d``: MNIST-1D generated offline (`mnist1d.data.make_dataset`, 4000 / 1000 signals of
  length 40), a 1-D residual CNN of the same shape;
- ``lm``: a *pretrained* language model compressed with a little data, as LLM users do
  (`bench.compression_lm`): byte-level Python standard-library source, the CLI's ``llama`` recipe
  (a 2-layer Llama-style model, hidden 64, grouped-query attention) pretrained to convergence
  on one split (``pretrain``), every method then trained on a calibration split of about 8 % of
  its tokens with the same step budget; the metric is perplexity on modules none of the splits
  contain (held out).

Every method of the benchmark trains with `fit` (SGD, momentum 0.9, weight decay 1e-4, a
cosine learning rate over the call, batch 64, a seeded batch order), so methods differ only in
what they do to the model, never in the loop.

``mnist1d-noisy`` is a harder image task of the same model and cost: the MNIST-1D signals with
more noise (correlated 0.4 instead of 0.25, i.i.d. 0.04 instead of 0.02), so that accuracy is not
saturated at 99 %: its dense model reached 89.7 % (seed 0, 20 epochs at lr 0.05; 2-core CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.compression_lm import calibration_data, pretraining_data

__all__ = ["LM_LR", "TASKS", "Task", "accuracy", "compression_epochs", "fit", "perplexity", "score"]

BATCH = 64
LM_LR = 3e-3  # the lm task's learning rate, hf:DIR's default (docs/benchmarks.md: the sweep that chose it)


class ResCNN(nn.Module):
    """stem conv -> one residual basic block -> strided conv -> global pool -> linear."""

    def __init__(self, dims: int, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        k = 3 if dims == 2 else 5
        self.stem = nn.Sequential(conv(1, width, k, padding=k // 2), bn(width), nn.ReLU())
        self.conv1, self.bn1 = conv(width, width, k, padding=k // 2), bn(width)
        self.conv2, self.bn2 = conv(width, width, k, padding=k // 2), bn(width)
        self.down = nn.Sequential(
            conv(width, 2 * width, k, stride=2, padding=k // 2), bn(2 * width), nn.ReLU()
        )
        self.head = nn.Linear(2 * width, classes)
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:  # x: (batch, 1, 8, 8) or (batch, 1, 40)
        h = self.stem(x)  # (batch, width, ...)
        h = F.relu(h + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(h))))))  # residual add
        pooled = self.down(h).flatten(2).mean(2)  # (batch, 2 * width)
        return self.head(pooled)


@dataclass(frozen=True)
class Task:
    name: str
    build: Callable[[], nn.Module]
    data: Callable[[], tuple[Tensor, Tensor, Tensor, Tensor]]  # x_train, y_train, x_test, y_test
    dense_epochs: int
    epochs: int  # the compression budget every method gets after the shared dense training
    lr: float  # peak learning rate of the compression phase (all methods)
    lm: bool = False  # language modelling: (B, T, V) logits, perplexity instead of accuracy
    optimizer: str = "sgd"  # every method of the task: "sgd" (momentum 0.9) or "adamw" (QASSO's variant too)
    dense_lr: float = 0.05  # peak learning rate of the shared dense training
    clip_norm: float | None = None  # gradient-norm clipping of every method (QASSO: its grad_clip)
    distill: float = 0.0  # every method: + this x T² KL(dense || model) at T = 2 (0: cross-entropy only)
    pretrain: Callable[[], tuple[Tensor, Tensor, Tensor, Tensor]] | None = None  # the dense model's
    # own training data (None: ``data``); ``data``'s training split is then the methods' only data


def compression_epochs(task: Task) -> dict[str, tuple[int, ...]]:
    """Epochs of ``task.data`` each method trains, phase by phase (the same total for all).

    >>> compression_epochs(TASKS["digits"])["pipeline"]
    (20, 20)
    """
    half = task.epochs // 2
    return {"dense FP32": (task.epochs,), "pipeline": (half, task.epochs - half), "geta": (task.epochs,)}


def _digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    cut = int(0.8 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _mnist1d(corr_noise: float = 0.25, iid_noise: float = 0.02) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MNIST-1D (the package's default arguments and seed), with the two noise scales given."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()  # generated offline, seeded by the package's defaults
    args.corr_noise_scale, args.iid_noise_scale = corr_noise, iid_noise
    d = make_dataset(args)

    def t(a: object) -> Tensor:
        return torch.as_tensor(a)

    x, xt = t(d["x"]).float().unsqueeze(1), t(d["x_test"]).float().unsqueeze(1)  # (N, 1, 40)
    return x, t(d["y"]).long(), xt, t(d["y_test"]).long()


def _llama() -> nn.Module:
    from geta.recipes.models import llama
    from geta.recipes.text import load_text

    return llama(load_text(None))


TASKS = {
    "digits": Task("digits", lambda: ResCNN(2), _digits, dense_epochs=20, epochs=40, lr=0.02),
    "mnist1d": Task("mnist1d", lambda: ResCNN(1), _mnist1d, dense_epochs=20, epochs=20, lr=0.02),
    # a pretrained model compressed with ~8 % of its data (`bench.compression_lm`): AdamW as the
    # transformer recipe, dense 20 epochs on the pretraining split (cached per seed), then
    # every method 20 epochs of the calibration split (5 steps each: 100 steps), with
    # distillation from the dense model (weight 1) as `geta compress` does for hf:DIR by default
    "lm": Task(
        "lm",
        _llama,
        calibration_data,
        dense_epochs=20,
        epochs=20,
        lr=LM_LR,
        lm=True,
        optimizer="adamw",
        dense_lr=3e-3,
        clip_norm=1.0,
        distill=1.0,
        pretrain=pretraining_data,
    ),
}

# the harder image task (more noise; the same model and cost): see the module docstring
TASKS["mnist1d-noisy"] = Task(
    "mnist1d-noisy", lambda: ResCNN(1), lambda: _mnist1d(0.4, 0.04), dense_epochs=20, epochs=20, lr=0.02
)


def fit(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    epochs: int,
    *,
    seed: int,
    lr: float,
    loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    on_epoch: Callable[[int], None] | None = None,
    clip_norm: float | None = None,
) -> None:
    """Train ``epochs`` epochs (cosine lr from ``lr`` to 0 in param group 0, other groups fixed);
    ``clip_norm`` clips the gradient norm of all parameters before each step."""
    x, y = data[0], data[1]
    steps = len(y) // BATCH
    total, s = epochs * steps, 0
    g = torch.Generator().manual_seed(seed)

    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(y), generator=g)
        for i in range(steps):
            idx = perm[i * BATCH : (i + 1) * BATCH]
            opt.param_groups[0]["lr"] = lr * 0.5 * (1 + math.cos(math.pi * s / total))
            out = model(x[idx])
            loss = _ce(out, y[idx]) if loss_fn is None else loss_fn(out, y[idx], x[idx])
            opt.zero_grad()
            loss.backward()
            if clip_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            opt.step()
            s += 1
        if on_epoch is not None:
            on_epoch(epoch)


def _ce(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of class logits (B, C) or token logits (B, T, V)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def perplexity(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """exp(mean token cross-entropy) on (x, y), in eval mode, in batches of 64 windows."""
    was = model.training
    model.eval()
    total = sum(
        float(_ce(model(x[i : i + 64]), y[i : i + 64])) * y[i : i + 64].numel() for i in range(0, len(y), 64)
    )
    model.train(was)
    return math.exp(total / y.numel())


def score(task: Task, model: nn.Module, data: tuple[Tensor, Tensor, Tensor, Tensor]) -> float:
    """The task's test metric: accuracy (classification) or perplexity (language modelling)."""
    return (perplexity if task.lm else accuracy)(model, data[2], data[3])


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    was = model.training
    model.eval()
    acc = float((model(x).argmax(1) == y).float().mean())
    model.train(was)
    return acc
