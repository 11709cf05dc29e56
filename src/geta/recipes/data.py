"""`DataBundle`: a small in-memory data set, and `load_data`, which parses a data specification.

A specification is ``NAME`` or ``NAME:PATH``:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1x8x8 images, 10 classes, offline);
- ``cifar10:DIR``: the CIFAR-10 python-pickle layout (data_batch_1..5, test_batch);
- ``imagefolder:DIR``: one sub-folder of images per class (``DIR/train`` + ``DIR/test``
  or ``DIR/val`` if present, else a split by seed), resized to 32x32 RGB (needs Pillow);
- ``text`` or ``text:FILE``: byte-level language modelling on a text file (default: the
  source of a few Python standard-library modules, read from disk).

Every bundle keeps its tensors in memory (uint8 images are normalised per batch), and its
batch order is a pure function of (seed, epoch), so an interrupted run resumes exactly.

>>> bundle = load_data("digits", seed=0)
>>> bundle.task.value, tuple(bundle.example(2)[0].shape), bundle.num_classes
('classify', (2, 1, 8, 8), 10)
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from geta.recipes.errors import RecipeError

__all__ = ["DataBundle", "Task", "load_data", "DATA_SETS"]

DATA_SETS = ("digits", "cifar10:DIR", "imagefolder:DIR", "text[:FILE]")
"""The data specifications `load_data` understands (for help texts)."""


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
        """The first ``n`` training inputs, model-ready: the example inputs of `geta.prepare`."""
        return (self.inputs(self.x_train[:n]),)

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


def _split_spec(spec: str) -> tuple[str, str | None]:
    name, sep, path = spec.partition(":")
    return name.strip().lower(), (path if sep else None)


def load_data(spec: str, *, seed: int = 0) -> DataBundle:
    """Load the data set named by ``spec`` (see the module docstring); errors say the fix."""
    from geta.recipes import images, text

    name, path = _split_spec(spec)
    loaders = {
        "digits": lambda: images.load_digits_bundle(seed),
        "cifar10": lambda: images.load_cifar10(_need_path(name, path)),
        "imagefolder": lambda: images.load_imagefolder(_need_path(name, path), seed),
        "text": lambda: text.load_text(path),
    }
    if name not in loaders:
        raise RecipeError(f"unknown data set {spec!r}; use one of: {', '.join(DATA_SETS)}")
    if name == "digits" and path:
        raise RecipeError(
            f"data set 'digits' is built in and takes no path; got {spec!r}, pass --data digits"
        )
    return loaders[name]()


def _need_path(name: str, path: str | None) -> str:
    if not path:
        raise RecipeError(f"data set {name!r} needs a directory: pass --data {name}:DIR")
    return path
