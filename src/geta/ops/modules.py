"""Module specs: everything geta knows about a module type, declared once.

Op handlers see ATen ops; a few facts belong to a module type instead. A `ModuleSpec` holds
them all, and every part of geta that needs one reads it from here (never by class name):

- ``kind`` (`Kind`): whether the module is a *layer* (its forward's first input is the input of
  its weight's op, so an input quantizer can be a forward pre-hook: `geta.prepare`), a
  *convolution* (a layer whose weight's dim 0 is the output channel, so a BatchNorm reading its
  output folds into it: `geta.export.baked`), or a *BatchNorm* (what folds);
- ``constraint(analysis, module)``: freezes what the module cannot change (`geta.prepare`);
- ``fixer(module)``: updates sizes the module keeps in attributes once its tensors were sliced
  (`geta.convert`) or resized to a saved shape (`geta.export.load_packed`, ``load_pretrained``);
- ``sizes(module)``: reads its size attributes back from its tensors' shapes, for a module
  built from a config and then resized (`geta.export.load_pretrained`);
- ``out_dim``: the dim of its ``weight`` that holds its output units (0 for ``nn.Linear``, 1
  for HF's transposed ``Conv1D``), read by `out_width` (`geta.export.layersizes`);
- ``rebuild(module)``: turns a freshly built module into the form `geta.prepare` or
  `geta.convert` gave it, when a packed file saved it under another class (`geta.export.load_packed`).

A spec applies to instances of its class and of its subclasses; where several specs match a
module, each applies, in the order they were registered. A new module type is one
`register_module_spec` call, where the class is defined or known (torch's below,
``nn.MultiheadAttention``'s in `geta.ops.mha`, optional libraries' in `geta.ops.hf` and
`geta.ops.timm`)::

    register_module_spec(ModuleSpec(MyAttention, fixer=lambda m: setattr(m, "heads", m.q.out_features // 64)))
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import nn

from geta.errors import GetaError
from geta.graph.context import Analysis

__all__ = [
    "Kind",
    "ModuleSpec",
    "register_module_spec",
    "is_registered",
    "specs_for",
    "is_layer",
    "is_kind",
    "apply_module_constraints",
    "apply_module_fixers",
    "apply_size_rules",
    "rebuild",
    "out_width",
    "freeze_tensor_dims",
]

Constraint = Callable[[Analysis, nn.Module], None]
Fixer = Callable[[nn.Module], None]


class Kind(enum.Enum):
    """What a module type is to geta's layer-level code."""

    OTHER = "other"  # not a layer: the spec only constrains, fixes or rebuilds
    LAYER = "layer"  # forward(x, ...): x is the input of its weight's op (input quantizer = pre-hook)
    CONV = "conv"  # a LAYER with weight (out, in/groups, *kernel) and ``bias``: a BatchNorm after it folds
    BATCHNORM = "batchnorm"  # eval-mode per-channel affine with running statistics: folds into a CONV


@dataclass(frozen=True)
class ModuleSpec:
    """The facts of one module type (module docstring); every field but ``cls`` is optional."""

    cls: type[nn.Module]
    kind: Kind = Kind.OTHER
    constraint: Constraint | None = None
    fixer: Fixer | None = None
    sizes: Fixer | None = None
    rebuild: Fixer | None = None
    out_dim: int | None = None


_SPECS: dict[type, ModuleSpec] = {}


def register_module_spec(spec: ModuleSpec) -> ModuleSpec:
    """Register ``spec`` for ``spec.cls`` (one spec per class: a second raises `GetaError`).

    >>> class Scale(nn.Module):
    ...     pass
    >>> _ = register_module_spec(ModuleSpec(Scale, kind=Kind.LAYER))
    >>> is_layer(Scale()), is_layer(nn.ReLU())
    (True, False)
    """
    if not (isinstance(spec.cls, type) and issubclass(spec.cls, nn.Module)):
        raise GetaError(f"ModuleSpec.cls must be an nn.Module subclass, got {spec.cls!r}")
    if spec.cls in _SPECS:
        raise GetaError(f"a module spec for {spec.cls.__qualname__} is already registered")
    _SPECS[spec.cls] = spec
    return spec


def is_registered(cls: type) -> bool:
    """Whether a spec was registered for exactly ``cls``."""
    return cls in _SPECS


def specs_for(module: nn.Module) -> Iterator[ModuleSpec]:
    """The specs that apply to ``module`` (of its class or a base class), in registration order."""
    return (s for cls, s in _SPECS.items() if isinstance(module, cls))


def is_kind(module: nn.Module, *kinds: Kind) -> bool:
    """Whether a spec that applies to ``module`` declares one of ``kinds``."""
    return any(s.kind in kinds for s in specs_for(module))


def is_layer(module: nn.Module) -> bool:
    """Whether ``module``'s forward's first input is the input of its weight's op."""
    return is_kind(module, Kind.LAYER, Kind.CONV)


def apply_module_constraints(analysis: Analysis, model: nn.Module) -> None:
    """Run every spec's ``constraint`` on the modules of ``model`` it applies to."""
    for mod in model.modules():
        for s in specs_for(mod):
            if s.constraint is not None:
                s.constraint(analysis, mod)


def apply_module_fixers(model: nn.Module) -> None:
    """Run every spec's ``fixer`` on the modules of ``model`` it applies to."""
    for mod in model.modules():
        for s in specs_for(mod):
            if s.fixer is not None:
                s.fixer(mod)


def apply_size_rules(model: nn.Module) -> None:
    """Run every spec's ``sizes`` rule (size attributes from tensor shapes) on ``model``."""
    for mod in model.modules():
        for s in specs_for(mod):
            if s.sizes is not None:
                s.sizes(mod)


def rebuild(module: nn.Module) -> bool:
    """Run the ``rebuild`` of the specs that apply to ``module``; False if none has one."""
    found = [s.rebuild for s in specs_for(module) if s.rebuild is not None]
    for fn in found:
        fn(module)
    return bool(found)


def out_width(module: object) -> int | None:
    """The number of output units of ``module``'s weight (its spec's ``out_dim``), or None.

    >>> out_width(nn.Linear(3, 5)), out_width(nn.ReLU()), out_width(None)
    (5, None, None)
    """
    if not isinstance(module, nn.Module):
        return None
    dims = [s.out_dim for s in specs_for(module) if s.out_dim is not None]
    weight = getattr(module, "weight", None)
    return int(weight.shape[dims[0]]) if dims and weight is not None else None


def freeze_tensor_dims(analysis: Analysis, tensor: object, dims: tuple[int, ...], reason: str) -> None:
    """Freeze every space bound to the given dims of ``tensor`` (by identity)."""
    for b in analysis.bindings:
        if b.ref.tensor is tensor and b.dim in dims:
            analysis.algebra.freeze(b.expr, reason)


# torch's own module types (nn.MultiheadAttention's spec is in geta.ops.mha)


def _linear_sizes(m: nn.Module) -> None:
    m.out_features, m.in_features = m.weight.shape  # weight (out, in)


def _embedding_sizes(m: nn.Module) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape  # weight (vocab, dim)


def _layer_norm_sizes(m: nn.Module) -> None:
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)  # weight (*normalized_shape)


register_module_spec(ModuleSpec(nn.Linear, kind=Kind.LAYER, sizes=_linear_sizes, out_dim=0))
register_module_spec(ModuleSpec(nn.modules.conv._ConvNd, kind=Kind.LAYER))  # incl. transposed
for _conv in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_module_spec(ModuleSpec(_conv, kind=Kind.CONV))
for _norm in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
    register_module_spec(ModuleSpec(_norm, kind=Kind.BATCHNORM))
register_module_spec(ModuleSpec(nn.Embedding, sizes=_embedding_sizes))
register_module_spec(ModuleSpec(nn.LayerNorm, sizes=_layer_norm_sizes))
