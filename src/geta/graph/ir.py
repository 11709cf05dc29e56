"""`Graph`: the captured computation of a model, with its tensors bound to objects.

A thin view over a `torch.export.ExportedProgram`: ATen-level nodes with a shape on every
value (``node.meta["val"]``), and every parameter/buffer placeholder bound to the tensor object
of the user's model (by identity) together with the module that owns it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn

__all__ = ["Graph", "TensorRef"]


@dataclass(frozen=True, eq=False)
class TensorRef:
    """A parameter or buffer of the model as seen by the graph."""

    tensor: torch.Tensor
    name: str  # qualified name in the model (display / user boundary only)
    owner: nn.Module  # the module that holds the tensor
    attr: str  # attribute name on ``owner`` (for parametrized weights: the parametrized name)
    is_param: bool


@dataclass(eq=False)
class Graph:
    """A captured model: fx nodes in topological order plus bindings of placeholders."""

    program: torch.export.ExportedProgram
    refs: dict[fx.Node, TensorRef]  # parameter/buffer placeholders -> tensor objects
    user_inputs: list[fx.Node]
    user_outputs: list[fx.Node]
    module_paths: dict[fx.Node, str] = field(default_factory=dict)  # node -> innermost module path

    @property
    def nodes(self) -> list[fx.Node]:
        return list(self.program.graph.nodes)

    def call_nodes(self) -> list[fx.Node]:
        return [n for n in self.program.graph.nodes if n.op == "call_function"]
