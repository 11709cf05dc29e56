"""Running statistics of normalisation layers: re-estimate them without touching any weight.

A BatchNorm normalises with the batch's own mean and variance while training and with its
*running* estimates in eval mode. Those estimates are an exponential average over past steps,
so they lag whenever the layers before them change faster than the average forgets: in QASSO's
joint stage the forgetting shrinks the pruned rows every step, commits zero them, and the
projection stage changes bit widths. A model evaluated (or converted) right then normalises
with statistics of a network that no longer exists, and its accuracy dips far below what its
weights can give. `recalibrate_norms` resets those estimates and recomputes them as a plain
average over a few training batches, under ``torch.no_grad``: weights, quantizer scalars and
optimizer state are left exactly as they are.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
>>> recalibrate_norms(model, [torch.randn(16, 4) for _ in range(3)])
3
>>> int(model[1].num_batches_tracked)
3

Layers without running statistics (LayerNorm, RMSNorm, GroupNorm, an InstanceNorm without
``track_running_stats``) normalise every input with its own statistics and have nothing to
re-estimate; a model with none of the others is left alone (the call returns 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

__all__ = ["running_norms", "recalibrate_norms"]

Batch = Tensor | Sequence[Any] | Mapping[str, Any]  # one forward's inputs (see `recalibrate_norms`)


def running_norms(model: nn.Module) -> list[nn.Module]:
    """The normalisation layers of ``model`` that keep running statistics, in module order.

    These are the BatchNorms (1d/2d/3d, lazy and synchronised ones included) and the
    InstanceNorms built with ``track_running_stats=True``.
    """
    return [
        m
        for m in model.modules()
        if isinstance(m, _NormBase) and m.track_running_stats and m.running_mean is not None
    ]


def _forward(model: nn.Module, batch: Batch) -> None:
    if isinstance(batch, Tensor):
        model(batch)
    elif isinstance(batch, Mapping):
        model(**batch)
    elif isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
        model(*batch)
    else:
        raise TypeError(
            f"batches: each batch must be a Tensor, a sequence of positional inputs or a mapping of "
            f"keyword inputs, got a {type(batch).__name__}"
        )


def _cuda_devices(model: nn.Module) -> list[int]:
    """The CUDA devices of ``model``'s tensors (their random states are saved and restored too)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


@torch.no_grad()
def recalibrate_norms(model: nn.Module, batches: Iterable[Batch], *, max_batches: int = 20) -> int:
    """Reset and re-estimate the running statistics of ``model``'s norms on ``batches``.

    Every layer of `running_norms` forgets its running mean and variance and averages those of
    the first ``max_batches`` batches instead (a cumulative average: its ``momentum`` is None
    during the pass and restored afterwards), exactly as if those batches were the only ones it
    had seen. The norms run in train mode; every other module runs in eval mode (no dropout,
    nothing else that behaves differently while training); afterwards each module's
    ``training`` flag is what it was. No gradient is computed, so weights, quantizer scalars
    and any optimizer's state are unchanged. The global random states (CPU, and the CUDA
    devices ``model`` lives on) are restored afterwards, so a training run that recalibrates
    draws the same random numbers as one that does not (a resumed run stays bit-for-bit the same).

    ``batches`` yields model-ready inputs on the model's device: a Tensor (the one positional
    input), a tuple/list of positional inputs, or a mapping of keyword inputs; only the first
    ``max_batches`` are read (a generator is not consumed further). A model without such
    norms is a no-op: no batch is read. If ``batches`` is empty, the statistics are left as
    they were; so they are when a forward raises (the exception propagates).

    Returns the number of batches the statistics were averaged over (0 for a no-op).
    """
    if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1:
        raise ValueError(f"max_batches must be an int >= 1, got {max_batches!r}")
    norms = running_norms(model)
    if not norms:
        return 0
    modes = {m: m.training for m in model.modules()}
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in norms]  # fmt: skip
    used, finished = 0, False
    try:
        with torch.random.fork_rng(devices=_cuda_devices(model)):
            model.eval()
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batches of this pass
                m.train()
            for batch in batches:
                _forward(model, batch)
                used += 1
                if used >= max_batches:
                    break
        finished = True
    finally:
        for m, (momentum, mean, var, tracked) in zip(norms, saved):
            m.momentum = momentum
            if used == 0 or not finished:  # nothing averaged, or a forward failed: keep the old ones
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(tracked)
        for m, training in modes.items():
            m.training = training
    return used
