"""`load_data`: parse a data specification and load it as a `DataBundle`.

A specification is ``NAME`` or ``NAME:PATH``:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1x8x8 images, 10 classes, offline);
- ``cifar10:DIR``: the CIFAR-10 python-pickle layout (data_batch_1..5, test_batch);
- ``imagefolder:DIR``: one sub-folder of images per class (``DIR/train`` + ``DIR/test``
  or ``DIR/val`` if present, else a split by seed), resized to 32x32 RGB (needs Pillow);
- ``text`` or ``text:FILE``: byte-level language modelling on a text file (default: the
  source of a few Python standard-library modules, read from disk).

Layers (imports point down): this module picks a loader; the loaders live in
`geta.recipes.images` and `geta.recipes.text`; both build `geta.recipes.bundle.DataBundle`
(re-exported here with `Task`).

>>> bundle = load_data("digits", seed=0)
>>> bundle.task.value, tuple(bundle.example(2)[0].shape), bundle.num_classes
('classify', (2, 1, 8, 8), 10)
"""

from __future__ import annotations

from geta.recipes import images, text
from geta.recipes.bundle import DataBundle, Task
from geta.recipes.errors import RecipeError

__all__ = ["DataBundle", "Task", "load_data", "DATA_SETS"]

DATA_SETS = ("digits", "cifar10:DIR", "imagefolder:DIR", "text[:FILE]")
"""The data specifications `load_data` understands (for help texts)."""


def _split_spec(spec: str) -> tuple[str, str | None]:
    name, sep, path = spec.partition(":")
    return name.strip().lower(), (path if sep else None)


def load_data(spec: str, *, seed: int = 0) -> DataBundle:
    """Load the data set named by ``spec`` (see the module docstring); errors say the fix."""
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
