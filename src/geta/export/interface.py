"""The outside of an exported graph: dynamic batch and sequence axes, names for inputs and outputs.

ONNX files from `geta.export.onnx` are meant to be served, so they should not be tied to the
batch size of the example inputs, and their outputs should say what they are:

- **inputs** keep the names of the model's ``forward`` arguments (``x``, ``input_ids``,
  ``attention_mask``), which is what torch's exporter does by itself;
- **outputs** are named from the structure the model returns (`output_names`): one tensor is
  ``"output"``; a dict or a Hugging Face ``ModelOutput`` gives its keys (``"logits"``); a tuple
  gives ``"output_0"``, ``"output_1"``; nested values join their path with dots;
- **batch**: dim 0 of every tensor input is one shared symbolic dimension ``"batch"``
  (`batch_shapes`), so the file runs at batch 1, 8 or 1000 whatever the example's batch was;
- **sequence**: dim 1 of every integer or boolean input with at least two dims (token ids,
  attention masks, position ids: ``(batch, tokens)``) is one shared symbolic dimension
  ``"sequence"``, so a language model runs at any number of tokens. Float inputs keep their
  other dims (an image's channels and size, a feature width).

torch's exporter fixes a dimension whose example size is 0 or 1, so the graph is traced on
the example repeated to at least 2 along every dynamic axis (`resized`); the parity check
then runs at the example's shape and at another one (`resized` again).

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

__all__ = ["BATCH_DIM_NAME", "SEQUENCE_DIM_NAME", "batch_shapes", "dynamic_dims", "output_names", "resized"]

BATCH_DIM_NAME = "batch"  # the symbolic name of dim 0 in the ONNX file's inputs and outputs
SEQUENCE_DIM_NAME = "sequence"  # the symbolic name of dim 1 of token inputs (and of the outputs)


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


def dynamic_dims(t: Tensor, *, batch: bool = True, sequence: bool = True) -> dict[int, str]:
    """The symbolic dims of one input tensor under the module docstring's rule.

    >>> dynamic_dims(torch.zeros(2, 16, dtype=torch.long))
    {0: 'batch', 1: 'sequence'}
    >>> dynamic_dims(torch.zeros(2, 3, 32, 32))
    {0: 'batch'}
    """
    dims: dict[int, str] = {}
    if batch and t.dim() >= 1:
        dims[0] = BATCH_DIM_NAME
    if sequence and t.dim() >= 2 and not (t.is_floating_point() or t.is_complex()):
        dims[1] = SEQUENCE_DIM_NAME
    return dims


def _spec(value: object, dims: dict[str, Any], batch: bool, sequence: bool) -> Any:
    """The dynamic-shape spec of one input: its `dynamic_dims` as ``torch.export.Dim``s."""
    if isinstance(value, Tensor):
        spec = {d: dims[name] for d, name in dynamic_dims(value, batch=batch, sequence=sequence).items()}
        return spec or None
    if isinstance(value, Mapping):
        return {k: _spec(v, dims, batch, sequence) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_spec(v, dims, batch, sequence) for v in value)
    return None


def batch_shapes(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    sequence: bool = False,
    batch: bool = True,
) -> Any:
    """``dynamic_shapes`` for ``torch.export`` / ``torch.onnx.export``: dim 0 of every input is
    "batch" and, with ``sequence``, dim 1 of every token input is "sequence" (`dynamic_dims`).

    Keyed by ``forward``'s argument names when the inputs bind to its signature (positional
    and keyword inputs mixed), else a tuple over the positional inputs.
    """
    dims = {
        BATCH_DIM_NAME: torch.export.Dim(BATCH_DIM_NAME),
        SEQUENCE_DIM_NAME: torch.export.Dim(SEQUENCE_DIM_NAME),
    }
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return tuple(_spec(a, dims, batch, sequence) for a in args)
    return {name: _spec(value, dims, batch, sequence) for name, value in bound.arguments.items()}


def resized(value: Any, sizes: dict[str, int]) -> Any:
    """``value`` (nested inputs) with each dim named in ``sizes`` (`dynamic_dims`) set to that size.

    Rows (and token positions) are taken cyclically from the example, so the values stay
    valid inputs: ids stay in the vocabulary, masks stay masks.

    >>> resized((torch.tensor([[1, 2, 3]]),), {"batch": 2, "sequence": 2})
    (tensor([[1, 2],
            [1, 2]]),)
    """
    if isinstance(value, Tensor):
        out = value
        named = dynamic_dims(value, batch=BATCH_DIM_NAME in sizes, sequence=SEQUENCE_DIM_NAME in sizes)
        for d, name in named.items():
            if out.shape[d] > 0:
                out = out.index_select(d, torch.arange(sizes[name], device=out.device) % out.shape[d])
        return out
    if isinstance(value, Mapping):
        return {k: resized(v, sizes) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(resized(v, sizes) for v in value)
    return value
