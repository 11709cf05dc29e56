"""`analyze_model`: a float model's search space, the first three steps of `geta.prepare`.

1. **capture** the model (``torch.export``, `geta.graph.capture`);
2. **analyse** what every node of the graph does to channels, with the module types'
   constraints (`geta.graph.analysis`, `geta.ops.modules`);
3. **groups**: the prune groups of the analysed graph (`geta.graph.groups`); a group whose
   removal breaks the model's forward (a size fixed in its code, `geta.graph.trial`) is made
   unprunable.

The result is a `geta.Plan` without quantizers. Quantizers never change it: a model that
carries geta quantizers has the same groups as its float model.

>>> import torch, geta
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> _, plan = analyze_model(model, (torch.randn(2, 4),), geta.Config())
>>> [(g.size, g.prunable) for g in plan.groups], plan.bindings
([(8, True), (2, False)], [])
"""

from __future__ import annotations

from torch import nn

from geta.config import Config
from geta.graph.analysis import Analysis, analyze
from geta.graph.capture import capture
from geta.graph.groups import build_groups
from geta.graph.ir import Graph
from geta.graph.trial import unconvertible_groups
from geta.ops.modules import apply_module_constraints
from geta.plan import Plan

__all__ = ["analyze_model"]


def analyze_model(model: nn.Module, example_inputs: object, config: Config) -> tuple[Analysis, Plan]:
    """Capture and analyse without attaching quantizers (the float model's search space): the
    first three steps of `prepare` (capture, analyse, groups)."""
    _register_known_layers()
    graph = capture(model, example_inputs)
    analysis = _analyse(graph, model)
    return analysis, _groups(model, graph, analysis, example_inputs, config)


def _analyse(graph: Graph, model: nn.Module) -> Analysis:
    """Step 2: what every node of ``graph`` does to channels, with the module types' constraints."""
    analysis = analyze(graph, model)
    apply_module_constraints(analysis, model)
    return analysis


def _groups(
    model: nn.Module, graph: Graph, analysis: Analysis, example_inputs: object, config: Config
) -> Plan:
    """Step 3: a plan without quantizers, with the prune groups; groups whose removal breaks the
    model's forward are made unprunable."""
    groups, spaces = build_groups(analysis, config.exclude_prune)
    plan = Plan(
        model,
        config,
        graph,
        groups,
        [],
        analysis=analysis,
        group_spaces=spaces,
        example_inputs=example_inputs,
    )
    for gid in unconvertible_groups(plan):
        g = plan.groups[gid]
        g.prunable, g.reason = False, "removing a unit breaks the model's forward (a size fixed in its code)"
    return plan


def _register_known_layers() -> None:
    from geta.ops.catalog import load_library_knowledge

    load_library_knowledge()  # transformers' and timm's classes, if the user imported them
