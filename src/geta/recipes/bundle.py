"""`DataBundle`: a small in-memory data set, and the `Task` a model is trained for.

The bottom of the recipes' data layers: the loaders (`geta.recipes.images`,
`geta.recipes.text`) build bundles, and `geta.recipes.data.load_data` picks a loader from a
data specification.

Every bundle keeps its tensors in memory (uint8 images are normalised per batch), and its
batch order is a pure function of (seed, epoch), so an interrupted run resumes exactly.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DataBundle", "Task"]


class Task(enum.Enum):
    """What the model is trained to do."""

    CLASSIFY = "classify"  # x: images (N, C, H, W), y: class index (N,)
    LM = "lm"  # x: token ids (N, T), y: the next token of each position (N, T)


@dataclass(frozen=True, eq=False)
class DataBundle:
    """Train and test tensors of one data set plus what a model needs to know about them."""

    name: str
    task: Task
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int  # classes (CLASSIFY) or vocabulary size (LM)
    mean: tuple[float, ...] | None = None  # per-channel normalisation of uint8 images
    std: tuple[float, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (C, H, W) for images, (T,) for token windows."""
        return tuple(self.x_train.shape[1:])

    def inputs(self, x: Tensor) -> Tensor:
        """Model-ready inputs: uint8 images become normalised float32, tokens stay int64."""
        if x.dtype != torch.uint8 or self.mean is None or self.std is None:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = torch.tensor(self.mean).view(shape)
        std = torch.tensor(self.std).view(shape)
        return (x.float() / 255.0 - mean) / std

    def example(self, n: int = 1) -> tuple[Tensor]:
        """The first ``n`` training inputs, model-ready: the example inputs of `geta.prepare`.

        A copy, not a view: saving it (``inputs.pt``) writes these ``n`` rows, not the data set.
        """
        return (self.inputs(self.x_train[:n]).clone(),)

    def num_batches(self, batch_size: int, *, train: bool = True) -> int:
        n = len(self.x_train if train else self.x_test)
        return (n + batch_size - 1) // batch_size

    def batches(
        self, batch_size: int, *, train: bool = True, seed: int = 0, epoch: int = 0, start: int = 0
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield model-ready (x, y) batches; training batches are shuffled by (seed, epoch).

        ``start`` skips the first batches of the epoch (resuming inside an epoch).
        """
        x, y = (self.x_train, self.y_train) if train else (self.x_test, self.y_test)
        if train:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(len(x), generator=gen)
        else:
            order = torch.arange(len(x))
        for i in range(start * batch_size, len(x), batch_size):
            idx = order[i : i + batch_size]
            yield self.inputs(x[idx]), y[idx]
