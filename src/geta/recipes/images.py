"""Image data sets for the CLI recipes: scikit-learn digits, CIFAR-10 pickles, image folders.

All three return a `DataBundle` of uint8 images (N, C, H, W) that are normalised per batch with
the training set's per-channel mean and standard deviation.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from geta.recipes.bundle import DataBundle, Task
from geta.recipes.errors import RecipeError

__all__ = ["load_digits_bundle", "load_cifar10", "load_imagefolder", "IMAGE_SIZE"]

IMAGE_SIZE = 32  # image folders are resized to IMAGE_SIZE x IMAGE_SIZE RGB
_TEST_FRACTION = 0.2  # held-out share when a data set has no test split of its own
_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}


def _stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units."""
    f = x.double() / 255.0
    mean = f.mean(dim=(0, 2, 3))
    std = f.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _bundle(name: str, x_tr: Tensor, y_tr: Tensor, x_te: Tensor, y_te: Tensor, classes: int) -> DataBundle:
    mean, std = _stats(x_tr)
    return DataBundle(name, Task.CLASSIFY, x_tr, y_tr, x_te, y_te, classes, mean, std)


def _split(x: Tensor, y: Tensor, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A fixed random train/test split: the first 20 % of a seeded permutation is the test set."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(len(x) * _TEST_FRACTION))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def load_digits_bundle(seed: int = 0) -> DataBundle:
    """scikit-learn's 1797 8x8 digits (0..16 gray levels) as 1x8x8 uint8 images, split by seed."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise RecipeError(
            "data set 'digits' needs scikit-learn: pip install 'torch-geta[data]' (or scikit-learn)"
        ) from None
    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float64) * (255.0 / 16.0)  # (1797, 8, 8)
    x = torch.from_numpy(images.round().astype(np.uint8)).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.from_numpy(np.asarray(digits.target, dtype=np.int64))
    return _bundle("digits", *_split(x, y, seed), classes=10)


# What a CIFAR batch file may name: numpy's array reconstruction and the str->bytes codec of
# Python 2 pickles. Nothing else is found, so a file cannot call any other function.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Reads a CIFAR batch (a dict of lists and numpy arrays) and refuses anything else."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(
                f"the file names {module}.{name}, which a CIFAR-10 batch never does "
                "(refused: it could run code)"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> tuple[Tensor, Tensor]:
    """One CIFAR batch file, read by `_ArrayUnpickler` (plain data only, no code runs)."""
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        raw_data = np.asarray(batch[b"data"])
        raw_labels = np.asarray(batch.get(b"labels", batch.get(b"fine_labels")))
    except Exception as exc:
        raise RecipeError(
            f"CIFAR-10 file {path} could not be read ({type(exc).__name__}: {exc}); expected the "
            "python-pickle version (cifar-10-python.tar.gz, extracted)"
        ) from None
    data, labels = _checked_cifar(raw_data, raw_labels, path)
    if len(labels) != len(data):
        raise RecipeError(f"CIFAR-10 file {path} holds {len(data)} images but {len(labels)} labels")
    return torch.from_numpy(data), torch.from_numpy(labels)


def _checked_cifar(data: Any, labels: Any, path: Path) -> tuple[Any, Any]:
    """Pixels as uint8 (N, 3, 32, 32) and labels as int64, refusing what a cast would hide.

    Pixels must be whole numbers in [0, 255] (a NaN or 300 is an error, not a wrapped byte) and
    labels whole numbers in [0, 10).
    """

    def whole(a: Any, lo: int, hi: int) -> bool:
        if a.dtype.kind not in "iuf" or a.size == 0:
            return False
        return bool(np.isfinite(a).all() and (a == np.round(a)).all() and a.min() >= lo and a.max() <= hi)

    if not whole(data, 0, 255) or data.size % (3 * 32 * 32):
        raise RecipeError(
            f"CIFAR-10 file {path}: 'data' must hold whole pixel values in [0, 255], 3072 per image "
            f"(got dtype {data.dtype}, {data.size} values); the file is damaged or not CIFAR-10"
        )
    if labels.ndim != 1 or not whole(labels, 0, 9):
        raise RecipeError(
            f"CIFAR-10 file {path}: 'labels' must be whole numbers in [0, 9]; the file is damaged "
            "or not CIFAR-10"
        )
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(directory: str) -> DataBundle:
    """CIFAR-10 from ``directory`` (or its ``cifar-10-batches-py`` sub-folder)."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise RecipeError(
            f"CIFAR-10 directory {root} does not exist; pass --data cifar10:DIR with the "
            "extracted cifar-10-batches-py folder"
        )
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise RecipeError(
            f"CIFAR-10 directory {root} lacks {', '.join(missing)}; it must hold "
            "data_batch_1..data_batch_5 and test_batch (the python-pickle layout)"
        )
    train = [_unpickle(root / n) for n in names[:5]]
    x_te, y_te = _unpickle(root / "test_batch")
    x_tr = torch.cat([x for x, _ in train])
    y_tr = torch.cat([y for _, y in train])
    return _bundle("cifar10", x_tr, y_tr, x_te, y_te, classes=10)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_images(root: Path, classes: list[str]) -> tuple[Tensor, Tensor]:
    try:
        from PIL import Image
    except ImportError:
        raise RecipeError("data set 'imagefolder' needs Pillow to read images: pip install pillow") from None
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for label, cls in enumerate(classes):
        folder = root / cls
        files = (
            sorted(p for p in folder.iterdir() if p.suffix.lower() in _SUFFIXES) if folder.is_dir() else []
        )
        for file in files:
            try:
                with Image.open(file) as img:
                    img = img.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE))
                    xs.append(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))  # (3, H, W)
            except Exception as exc:
                raise RecipeError(f"image {file} could not be read ({exc}); remove it or fix it") from None
            ys.append(label)
    if not xs:
        raise RecipeError(
            f"image folder {root} holds no images ({', '.join(sorted(_SUFFIXES))}) in its class sub-folders"
        )
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64)


def load_imagefolder(directory: str, seed: int = 0) -> DataBundle:
    """Images in ``DIR/<class>/*`` (split by seed) or ``DIR/train/<class>`` + ``DIR/test|val/<class>``."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise RecipeError(
            f"image folder {root} does not exist; pass --data imagefolder:DIR with one "
            "sub-folder of images per class"
        )
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes = [p.name for p in _class_dirs(root / "train")]
        if len(classes) < 2:
            raise RecipeError(f"image folder {root / 'train'} needs at least two class sub-folders")
        x_tr, y_tr = _read_images(root / "train", classes)
        x_te, y_te = _read_images(test_dir, classes)
        return _bundle("imagefolder", x_tr, y_tr, x_te, y_te, classes=len(classes))
    classes = [p.name for p in _class_dirs(root)]
    if len(classes) < 2:
        raise RecipeError(
            f"image folder {root} needs at least two class sub-folders (DIR/<class>/*.png), "
            f"found {len(classes)}"
        )
    x, y = _read_images(root, classes)
    return _bundle("imagefolder", *_split(x, y, seed), classes=len(classes))
