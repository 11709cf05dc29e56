"""Built-in models and data sets for the ``geta`` command line (tiny and offline).

- `load_data`: ``digits`` (scikit-learn, bundled), ``cifar10:DIR``, ``imagefolder:DIR``,
  ``text[:FILE|DIR]``, ``jsonl:FILE[:FIELD]`` -> `DataBundle` (text byte-level, or tokenized);
- `build_model`: the recipes of `RECIPES` (resnet, vgg, mlp, vit, llama), a local Hugging Face
  checkpoint ``hf:DIR`` (`geta.recipes.hf`) or a user's ``module:factory``;
  `load_run_data` loads a data set as a model reads it (an ``hf:DIR`` checkpoint's tokenizer);
  `export_form`: what to export of a wrapped Hugging Face model (its own inputs, ``logits``);
- `defaults_for`: the `TrainingDefaults` of a model (optimizer, learning rates, clipping, stages);
- `train_epoch`, `evaluate`: the silent training loop pieces the CLI drives.

Optional dependencies (scikit-learn, Pillow, transformers) are imported only when the data set
or model that needs them is asked for.
"""

from __future__ import annotations

from geta.recipes.data import DATA_SETS, DataBundle, Task, load_data
from geta.recipes.defaults import TrainingDefaults
from geta.recipes.errors import RecipeError
from geta.recipes.hf import export_form
from geta.recipes.models import RECIPES, Recipe, build_model, defaults_for, load_factory, load_run_data
from geta.recipes.training import EpochStats, Metrics, cosine_lr, evaluate, logits_of, train_epoch

__all__ = [
    "DATA_SETS",
    "DataBundle",
    "Task",
    "load_data",
    "load_run_data",
    "TrainingDefaults",
    "defaults_for",
    "RecipeError",
    "RECIPES",
    "Recipe",
    "build_model",
    "export_form",
    "load_factory",
    "EpochStats",
    "Metrics",
    "cosine_lr",
    "evaluate",
    "logits_of",
    "train_epoch",
]
