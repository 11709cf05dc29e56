"""The built-in handler families, loaded in this one place.

Importing this module imports every family module, whose ``@register_op`` decorators fill the
registry (`geta.ops.registry`). The interpreter (`geta.graph.analysis`) imports it; nothing
below the interpreter does. A new family module is added to the import list here and nowhere
else. (Handlers of ops that exist only with an optional dependency, such as transformers'
custom ops, and fixers of its classes are registered by the module holding that dependency's
knowledge, `geta.ops.hf` or `geta.ops.timm`, which `load_library_knowledge` loads once the user
has imported the library.)

The facts other layers ask about an op (its traits, MAC rule, product kind) are declared with
its handler and read from the registry (`geta.ops.registry`); no table of ops is kept here.
"""

from __future__ import annotations

import importlib
import sys

from geta.ops import attention, elementwise, experts, indexing, layers, reduce, shape

__all__ = ["FAMILIES", "LIBRARIES", "load_library_knowledge"]

FAMILIES = (layers, elementwise, shape, indexing, reduce, attention, experts)
"""The handler modules, each a family of ops with one channel behaviour."""

LIBRARIES = (("transformers", "geta.ops.hf"), ("timm", "geta.ops.timm"))
"""(optional library, the geta module holding what geta knows about its classes)."""


def load_library_knowledge() -> None:
    """Register the layer types, fixers and op handlers of the optional libraries in use.

    Only libraries the user has already imported are looked at (``import geta`` never imports
    them); each knowledge module's ``register_loaded_classes()`` registers the classes of that
    library's modules loaded now. `geta.prepare` calls this before capturing a model.
    """
    for library, module in LIBRARIES:
        if library in sys.modules:
            importlib.import_module(module).register_loaded_classes()
