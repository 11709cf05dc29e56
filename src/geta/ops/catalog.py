"""The built-in handler families, loaded in this one place.

Importing this module imports every family module, whose ``@register_op`` decorators fill the
registry (`geta.ops.registry`). The interpreter (`geta.graph.analysis`) imports it; nothing
below the interpreter does. A new family module is added to the import list here and nowhere
else. (Handlers of ops that exist only with an optional dependency, such as transformers'
custom ops, are registered by the module holding that dependency's knowledge, `geta.ops.hf`.)

It also gathers the op sets other layers ask about (by op object, never by name):

- `PASSTHROUGH`: ops through which a weight is still "the weight" (fake-quant, casts);
- `NONNEGATIVE`: ops whose output is never negative (an unsigned input quantizer suffices);
- `VIEW_LIKE`: ops that only reshape.
"""

from __future__ import annotations

from geta.ops import attention, elementwise, experts, indexing, layers, reduce, shape

__all__ = ["FAMILIES", "PASSTHROUGH", "NONNEGATIVE", "VIEW_LIKE"]

FAMILIES = (layers, elementwise, shape, indexing, reduce, attention, experts)
"""The handler modules, each a family of ops with one channel behaviour."""

PASSTHROUGH = elementwise.PASSTHROUGH
NONNEGATIVE = elementwise.NONNEGATIVE
VIEW_LIKE = shape.VIEW_LIKE
