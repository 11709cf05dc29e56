"""The outside of an exported graph: a dynamic batch axis and names for its inputs and outputs.

ONNX files from `geta.export.onnx` are meant to be served, so they should not be tied to the
batch size of the example inputs, and their outputs should say what they are:

- **inputs** keep the names of the model's ``forward`` arguments (``x``, ``input_ids``,
  ``attention_mask``), which is what torch's exporter does by itself;
- **outputs** are named from the structure the model returns (`output_names`): one tensor is
  ``"output"``; a dict or a Hugging Face ``ModelOutput`` gives its keys (``"logits"``); a tuple
  gives ``"output_0"``, ``"output_1"``; nested values join their path with dots;
- **batch**: dim 0 of every tensor input is one shared symbolic dimension ``"batch"``
  (`batch_shapes`), so the file runs at batch 1, 8 or 1000 whatever the example's batch was.

>>> output_names({"logits": torch.zeros(2, 3), "hidden": (torch.zeros(1), torch.zeros(1))})
['logits', 'hidden.0', 'hidden.1']
>>> output_names(torch.zeros(2))
['output']
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["BATCH_DIM_NAME", "batch_shapes", "output_names"]

BATCH_DIM_NAME = "batch"  # the symbolic name of dim 0 in the ONNX file's inputs and outputs


def _named_leaves(value: object, path: str) -> list[str]:
    """Names of the tensor leaves of ``value`` in the order the exporter flattens them."""
    if isinstance(value, Tensor):
        return [path]
    if isinstance(value, Mapping):
        return [n for k, v in value.items() for n in _named_leaves(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, (tuple, list)):
        item = "{}.{}" if path else "{}_{}"  # top level: output_0; nested: hidden.0
        return [n for i, v in enumerate(value) for n in _named_leaves(v, item.format(path or "output", i))]
    return []  # None, ints, strings: not graph outputs


def output_names(outputs: object) -> list[str]:
    """Names of the tensors in a model's ``outputs`` (module docstring), depth first."""
    if isinstance(outputs, Tensor):
        return ["output"]
    return _named_leaves(outputs, "")


def _spec(value: object, batch: Any) -> Any:
    """The dynamic-shape spec of one input: dim 0 of each tensor leaf is ``batch``."""
    if isinstance(value, Tensor):
        return {0: batch} if value.dim() >= 1 else None
    if isinstance(value, Mapping):
        return {k: _spec(v, batch) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_spec(v, batch) for v in value)
    return None


def batch_shapes(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``dynamic_shapes`` for ``torch.export`` / ``torch.onnx.export``: dim 0 of every input is "batch".

    Keyed by ``forward``'s argument names when the inputs bind to its signature (positional
    and keyword inputs mixed), else a tuple over the positional inputs.
    """
    batch = torch.export.Dim(BATCH_DIM_NAME)
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return tuple(_spec(a, batch) for a in args)
    return {name: _spec(value, batch) for name, value in bound.arguments.items()}
