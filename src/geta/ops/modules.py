"""Module-level knowledge: which modules are layers, and constraints a module type imposes.

Op handlers see ATen ops; a few facts belong to a module type instead: whether its forward's
first input is the input of its quantizable op (so an input quantizer can be a pre-hook), and
constraints that freeze what the module cannot change, and fixers that `convert` runs after
slicing to update sizes a module keeps in attributes. Registered by type, never by name.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from geta.errors import GetaError
from geta.graph.context import Analysis

__all__ = [
    "register_layer_type",
    "is_layer",
    "register_module_constraint",
    "apply_module_constraints",
    "register_module_fixer",
    "apply_module_fixers",
]

_LAYERS: set[type] = {nn.Linear, nn.modules.conv._ConvNd}
Constraint = Callable[[Analysis, nn.Module], None]
_CONSTRAINTS: dict[type, Constraint] = {}


def register_layer_type(cls: type) -> None:
    """Declare that ``cls.forward``'s first argument is the input of its weight's op."""
    _LAYERS.add(cls)


def is_layer(module: nn.Module) -> bool:
    return any(isinstance(module, c) for c in _LAYERS)


def register_module_constraint(cls: type) -> Callable[[Constraint], Constraint]:
    def deco(fn: Constraint) -> Constraint:
        if cls in _CONSTRAINTS:
            raise GetaError(f"a module constraint for {cls.__name__} is already registered")
        _CONSTRAINTS[cls] = fn
        return fn

    return deco


def apply_module_constraints(analysis: Analysis, model: nn.Module) -> None:
    for mod in model.modules():
        for cls, fn in _CONSTRAINTS.items():
            if isinstance(mod, cls):
                fn(analysis, mod)


def freeze_tensor_dims(analysis: Analysis, tensor: object, dims: tuple[int, ...], reason: str) -> None:
    """Freeze every space bound to the given dims of ``tensor`` (by identity)."""
    for b in analysis.bindings:
        if b.ref.tensor is tensor and b.dim in dims:
            analysis.algebra.freeze(b.expr, reason)


Fixer = Callable[[nn.Module], None]
_FIXERS: dict[type, Fixer] = {}


def register_module_fixer(cls: type) -> Callable[[Fixer], Fixer]:
    """Register ``fn(module)``, run by `convert` after slicing, to update sizes kept in attributes."""

    def deco(fn: Fixer) -> Fixer:
        if cls in _FIXERS:
            raise GetaError(f"a module fixer for {cls.__name__} is already registered")
        _FIXERS[cls] = fn
        return fn

    return deco


def has_module_fixer(cls: type) -> bool:
    return cls in _FIXERS


def apply_module_fixers(model: nn.Module) -> None:
    for mod in model.modules():
        for cls, fn in _FIXERS.items():
            if isinstance(mod, cls):
                fn(mod)
