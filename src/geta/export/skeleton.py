"""What a packed file records beyond tensors, so that a fresh model of the same class can hold it.

A converted model differs from a freshly built one of the same class in three ways, and
`describe` records each of them (JSON-ready, stored in the packed file's manifest):

- **quantizers**: which layer weights and layer inputs carry a geta `LearnableQuantizer`, and
  the settings that are not tensors (``signed``, ``ste``, whether the exponent learns); which
  modules quantize activation products (attention's q·kᵀ, p·v), with their layout
  (`geta.quant.products`);
- **tensor shapes**: already in the manifest, one entry per ``state_dict`` key;
- **size attributes**: every integer (or tuple of integers) attribute of every module
  (``out_features``, ``in_channels``, ``num_heads``, ...) and the module's class, which
  `geta.convert` may have changed (``nn.MultiheadAttention`` -> ``PrunedMultiheadAttention``).

`fit(model, description, shapes)` makes ``model`` look like that: it rebuilds each module saved
under another class (its `geta.ops.modules.ModuleSpec`'s ``rebuild``), attaches the missing
quantizers, replaces every tensor whose shape differs by an empty one of the recorded shape
(on the tensor's own device, ``meta`` included), runs the module specs' fixers and sets the
recorded size attributes. The values are then loaded by `geta.export.load_packed`. So the
skeleton of a packed file can be the model the user builds anyway::

    model = MyNet()                                  # as before prepare: dense, no quantizers
    small = geta.export.load_packed("model.geta", model)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

import geta.ops.mha  # noqa: F401  (registers nn.MultiheadAttention's module spec)
from geta.errors import ExportError
from geta.ops.modules import apply_module_fixers, rebuild
from geta.quant.attach import (
    attach_input_quantizer,
    attach_weight_quantizer,
    input_quantizer,
    weight_quantizers,
)
from geta.quant.products import product_quantizers, restore_product_quantizers
from geta.quant.quantizer import LearnableQuantizer

__all__ = ["class_name", "describe", "fit", "size_attributes"]


def class_name(module: nn.Module | type) -> str:
    """``module.qualname`` of a class, or of a module's own class (before parametrizations)."""
    cls = module if isinstance(module, type) else parametrize.type_before_parametrizations(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _size_like(value: object) -> bool:
    """An integer size or a tuple of them (``kernel_size``); bools are not sizes."""
    if isinstance(value, tuple):
        return all(_size_like(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool)


def size_attributes(module: nn.Module) -> dict[str, Any]:
    """The module's public integer attributes (tuples as lists, JSON-ready)."""
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in vars(module).items()
        if not k.startswith("_") and _size_like(v)
    }


def _quantizer_entry(module_name: str, kind: str, tensor: str, q: LearnableQuantizer) -> dict[str, Any]:
    """Where the quantizer sits plus its settings (`LearnableQuantizer.to_config`, no scalars)."""
    return {"module": module_name, "kind": kind, "tensor": tensor, **q.to_config(scalars=False)}


def describe(model: nn.Module) -> dict[str, Any]:
    """The quantizer bindings, classes and size attributes of ``model`` (module docstring)."""
    quantizers: list[dict[str, Any]] = []
    modules: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if isinstance(module, LearnableQuantizer):
            continue
        for attr, q in weight_quantizers(module).items():
            quantizers.append(_quantizer_entry(name, "weight", attr, q))
        q_in = input_quantizer(module)
        if q_in is not None:
            quantizers.append(_quantizer_entry(name, "input", "", q_in))
        holder = product_quantizers(module)
        if holder is not None:
            quantizers.append({"module": name, "kind": "products", "layout": holder.layout()})
        sizes = size_attributes(module)
        if sizes:
            modules[name] = {"class": class_name(module), "sizes": sizes}
    return {"quantizers": quantizers, "modules": modules}


def _module(model: nn.Module, name: str, what: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise ExportError(
            f"the packed file has {what} in a module {name!r} that {type(model).__name__} does not "
            "have; load it into a model of the class that was saved"
        ) from exc


def _attach_missing(model: nn.Module, quantizers: list[dict[str, Any]]) -> None:
    for e in quantizers:
        module = _module(model, e["module"], f"a quantizer ({e['kind']})")
        if e["kind"] == "products":
            if product_quantizers(module) is None:
                restore_product_quantizers(module, e["layout"])
            continue
        if e["kind"] == "weight" and e["tensor"] not in weight_quantizers(module):
            attach_weight_quantizer(module, e["tensor"], LearnableQuantizer.from_config(e))
        elif e["kind"] == "input" and input_quantizer(module) is None:
            attach_input_quantizer(module, LearnableQuantizer.from_config(e))


def _resize(model: nn.Module, shapes: dict[str, list[int]]) -> None:
    """Replace each tensor whose shape differs from ``shapes`` by an empty one (ties kept)."""
    replaced: dict[int, torch.Tensor] = {}
    for key, t in model.state_dict(keep_vars=True).items():
        shape = shapes.get(key)
        if shape is None or list(t.shape) == list(shape):
            continue
        owner_name, _, attr = key.rpartition(".")
        owner = model.get_submodule(owner_name)
        new = replaced.get(id(t))
        if new is None:
            new = torch.empty(shape, dtype=t.dtype, device=t.device)
            if isinstance(t, nn.Parameter):
                new = nn.Parameter(new, requires_grad=t.requires_grad)
            replaced[id(t)] = new
        setattr(owner, attr, new)  # a parameter stays a parameter, a buffer a buffer


def _set_sizes(model: nn.Module, modules: dict[str, dict[str, Any]]) -> None:
    for name, entry in modules.items():
        module = _module(model, name, "size attributes")
        if class_name(module) != entry["class"]:
            raise ExportError(
                f"module {name!r} is a {class_name(module)} here but was saved as a {entry['class']}; "
                "load the file into a model of the class that was saved"
            )
        for attr, value in entry["sizes"].items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)


def _rebuild(model: nn.Module, modules: dict[str, dict[str, Any]]) -> None:
    """Rebuild (`geta.ops.modules.ModuleSpec.rebuild`) each module saved under another class.

    E.g. an ``nn.MultiheadAttention`` that prepare or convert made a ``PrunedMultiheadAttention``.
    """
    for name, entry in modules.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue  # `_set_sizes` names it
        if class_name(module) != entry["class"]:
            rebuild(module)


def fit(model: nn.Module, description: dict[str, Any], shapes: dict[str, list[int]]) -> None:
    """Make ``model`` match a `describe` record and the tensor ``shapes`` (module docstring).

    The tensors of ``model`` are left empty (or keep their values where the shape did not
    change): load the values next. Raises `ExportError` for a model of another architecture.
    """
    modules = description.get("modules", {})
    _rebuild(model, modules)
    _attach_missing(model, description.get("quantizers", []))
    _resize(model, shapes)
    apply_module_fixers(model)  # e.g. nn.MultiheadAttention -> PrunedMultiheadAttention
    _set_sizes(model, modules)
