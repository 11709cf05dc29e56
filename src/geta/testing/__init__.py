"""Test helpers shipped with geta, so that you can test your own models the way geta tests its own.

- `zoo`: tiny, structurally faithful models (CNNs, attention, Hugging Face transformers, ops
  geta does not understand) with example inputs; ``zoo.build(name, seed)`` is deterministic.
- `zero_random_groups`: zero random units of a plan's prunable groups (zero-invariance checks).
- `model_outputs` and `max_relative_error`: run a model and compare nested outputs.

Importing this package never imports transformers; the Hugging Face entries import it when
they are built.

>>> from geta.testing import ZOO, zoo
>>> ZOO["mlp"].tags
frozenset({'mlp'})
>>> zoo.names(tags={"gqa"})
['hf_llama', 'hf_llama_sdpa', 'hf_qwen2']
"""

from __future__ import annotations

from geta.testing import zoo
from geta.testing.invariance import max_relative_error, model_outputs, zero_random_groups
from geta.testing.zoo import ZOO, ZooEntry

__all__ = ["ZOO", "ZooEntry", "max_relative_error", "model_outputs", "zero_random_groups", "zoo"]
