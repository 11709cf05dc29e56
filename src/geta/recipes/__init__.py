"""Built-in models and data sets for the ``geta`` command line (tiny and offline).

- `load_data`: ``digits`` (scikit-learn, bundled), ``cifar10:DIR``, ``imagefolder:DIR``,
  ``text[:FILE]`` -> `DataBundle`;
- `build_model`: the recipes of `RECIPES` (resnet, vgg, mlp, vit, llama) or a user's
  ``module:factory``;
- `train_epoch`, `evaluate`: the silent training loop pieces the CLI drives.

Optional dependencies (scikit-learn, Pillow, transformers) are imported only when the data set
or model that needs them is asked for.
"""

from __future__ import annotations

from geta.recipes.data import DATA_SETS, DataBundle, Task, load_data
from geta.recipes.errors import RecipeError
from geta.recipes.models import RECIPES, Recipe, build_model, load_factory
from geta.recipes.training import EpochStats, Metrics, cosine_lr, evaluate, logits_of, train_epoch

__all__ = [
    "DATA_SETS",
    "DataBundle",
    "Task",
    "load_data",
    "RecipeError",
    "RECIPES",
    "Recipe",
    "build_model",
    "load_factory",
    "EpochStats",
    "Metrics",
    "cosine_lr",
    "evaluate",
    "logits_of",
    "train_epoch",
]
