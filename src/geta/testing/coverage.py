"""Does geta cover a model? One check: prepare, zero half the prunable units, convert, compare.

`check_model` runs the whole pipeline on one model and records what a coverage table needs:

1. `geta.prepare` with weight and activation quantizers;
2. `zero_random_groups` zeroes ``fraction`` of the prunable units;
3. `geta.convert` removes them; the model *passes* when the converted model computes the same
   outputs as the zeroed one (relative error <= ``tolerance``) and has fewer parameters.

Besides pass/fail it measures the *prunable share*: the fraction of the model's weight elements
(embeddings, the output head and parameters its forward never uses left out) that at least one
prunable group can remove, each element counted once. A model can pass with a share near
zero (everything frozen, nothing removed, nothing broken) — the share says how much of it
geta can actually compress. Every frozen group's reason is kept (node names stripped, so
that equal causes count together).

A failure never raises: the stage that failed and the error are recorded instead.

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> result = check_model(model, (torch.randn(2, 4),))
>>> result.passed, result.groups, result.prunable_groups, result.prunable_share
(True, 2, 1, 1.0)
>>> result.frozen
{'feeds the model output': 1}
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from geta.config import Config
from geta.convert import convert
from geta.plan import Plan
from geta.prepare import prepare
from geta.testing.invariance import max_relative_error, model_outputs, zero_random_groups

__all__ = ["CoverageResult", "check_model", "general_reason", "prunable_share", "head_modules"]


@dataclass
class CoverageResult:
    """What `check_model` found for one model (plain data: it serialises with `dataclasses.asdict`)."""

    passed: bool
    stage: str  # "ok", or where it failed: "prepare", "convert", "mismatch", "no-removal"
    error: str | None = None  # the exception (type: first line) or the failed condition
    params: int = 0  # parameters of the float model
    params_after: int = 0  # parameters of the converted model (quantizer scalars included)
    groups: int = 0
    prunable_groups: int = 0
    units: int = 0  # removable units over the prunable groups
    zeroed: int = 0  # units zeroed by the check
    prunable_share: float = 0.0  # of the weight elements (embeddings and head excluded)
    relative_error: float | None = None  # converted vs zeroed outputs
    seconds: dict[str, float] = field(default_factory=dict)  # "prepare", "convert"
    frozen: dict[str, int] = field(default_factory=dict)  # general reason -> frozen groups
    unknown_ops: dict[str, int] = field(default_factory=dict)  # op without a handler -> nodes


def check_model(
    model: nn.Module,
    example_inputs: object,
    *,
    fraction: float = 0.5,
    seed: int = 0,
    tolerance: float = 1e-4,
    config: Config | None = None,
    head: Iterable[nn.Module] | None = None,
) -> CoverageResult:
    """Prepare ``model``, zero ``fraction`` of its prunable units, convert, compare; never raises.

    ``config`` defaults to weights and activations quantized (``weight_bits=act_bits=(4, 8)``).
    ``head`` names the output layers left out of the prunable share (default: `head_modules`).
    The model is modified in place (quantizers attached, units zeroed).
    """
    config = config if config is not None else Config(weight_bits=(4, 8), act_bits=(4, 8))
    weights = _distinct_params(model)  # before prepare adds the quantizers' own parameters
    result = CoverageResult(passed=False, stage="prepare", params=sum(p.numel() for p in weights))
    start = time.perf_counter()
    try:
        plan = prepare(model, example_inputs, config)
    except Exception as err:
        result.error = _describe(err)
        return result
    result.seconds["prepare"] = time.perf_counter() - start
    _record_groups(result, plan)
    heads = list(head) if head is not None else head_modules(model, plan)
    # torch.export lifts every parameter; those no op reads (an eval-mode aux head) do not count
    used = {id(r.tensor) for node, r in plan.graph.refs.items() if node.users}
    result.prunable_share = prunable_share(
        plan, [w for w in weights if id(w) in used], _left_out(model, heads)
    )
    result.zeroed = zero_random_groups(plan, fraction, seed)
    before = sum(p.numel() for p in model.parameters())
    result.stage = "convert"
    start = time.perf_counter()
    try:
        reference = model_outputs(model, example_inputs)
        small = convert(model, plan, verify=False)
        result.seconds["convert"] = time.perf_counter() - start
        result.params_after = sum(p.numel() for p in small.parameters())
        result.relative_error = max_relative_error(model_outputs(small, example_inputs), reference)
        if result.relative_error > tolerance:
            result.relative_error = min(
                result.relative_error, _error_in_float64(model, small, example_inputs)
            )
    except Exception as err:
        result.error = _describe(err)
        return result
    if result.relative_error > tolerance:
        result.stage, result.error = (
            "mismatch",
            f"converted != zeroed (relative error {result.relative_error:.1e})",
        )
    elif result.params_after >= before:
        result.stage, result.error = "no-removal", "no parameter removed (no prunable unit)"
    else:
        result.passed, result.stage = True, "ok"
    return result


def _error_in_float64(model: nn.Module, small: nn.Module, example_inputs: object) -> float:
    """The comparison again in float64 (``inf`` if a model cannot run in it).

    With activation quantizers, float32 rounding differences of a few ulps between the zeroed
    and the converted model (sums over fewer terms) can move a value across a rounding
    boundary of a 4-bit quantizer: one quantization step of difference in some element. In
    float64 such flips vanish, while a real structural error stays.
    """
    to64 = _cast(example_inputs)
    try:
        model.to(torch.float64)
        small.to(torch.float64)
        return max_relative_error(model_outputs(small, to64), model_outputs(model, to64))
    except Exception:
        return math.inf
    finally:
        model.to(torch.float32)


def _cast(inputs: object) -> object:
    if isinstance(inputs, torch.Tensor):
        return inputs.double() if inputs.is_floating_point() else inputs
    if isinstance(inputs, dict):
        return {k: _cast(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_cast(v) for v in inputs)
    return inputs


def _record_groups(result: CoverageResult, plan: Plan) -> None:
    result.groups = len(plan.groups)
    result.prunable_groups = len(plan.prunable_groups)
    result.units = plan.num_prunable_units
    reasons = Counter(general_reason(g.reason or "") for g in plan.groups if not g.prunable)
    result.frozen = dict(reasons.most_common())
    if plan.analysis is not None:
        result.unknown_ops = dict(plan.analysis.unknown_ops)


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


_NODE_NAME = re.compile(r"\b([A-Za-z][A-Za-z0-9]*(?:_[A-Za-z][A-Za-z0-9]*)*)_\d+\b")


def general_reason(reason: str) -> str:
    """A frozen group's reason without node numbers, so equal causes count together.

    >>> general_reason("contraction of two activations at matmul_3")
    'contraction of two activations at matmul'
    >>> general_reason("aten.select.int picks channels at select_12")
    'aten.select.int picks channels at select'
    """
    return _NODE_NAME.sub(r"\1", reason)


def _distinct_params(model: nn.Module) -> list[torch.Tensor]:
    return list({id(p): p for p in model.parameters()}.values())


def _left_out(model: nn.Module, heads: Iterable[nn.Module]) -> set[int]:
    """Ids of the parameters outside the share: embedding tables and the output head."""
    modules = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    inputs = getattr(model, "get_input_embeddings", None)
    if callable(inputs):  # a Hugging Face model's input embedding (a table or a patch projection)
        try:
            found = inputs()
        except (NotImplementedError, AttributeError):
            found = None
        if isinstance(found, nn.Module):
            modules.append(found)
    modules.extend(heads)
    return {id(p) for m in modules for p in m.parameters()}


def prunable_share(plan: Plan, weights: Iterable[torch.Tensor], left_out: set[int] = frozenset()) -> float:
    """Fraction of the elements of ``weights`` (ids in ``left_out`` skipped) that a prunable group owns.

    An element belongs to a group when its index along a slice's dimension is one of the
    group's positions; an element several groups own (a row of one, a column of another) is
    counted once. Returns 0.0 when nothing is counted.
    """
    removable: dict[int, torch.Tensor] = {}
    for g in plan.prunable_groups:
        for s in g.slices:
            if not s.is_param or id(s.tensor) in left_out:
                continue
            mask = removable.setdefault(id(s.tensor), torch.zeros(s.tensor.shape, dtype=torch.bool))
            shape = [1] * mask.dim()
            shape[s.dim] = -1
            hit = torch.zeros(mask.shape[s.dim], dtype=torch.bool)
            hit[s.index.reshape(-1)] = True
            mask |= hit.reshape(shape)
    total = owned = 0
    for p in weights:
        if id(p) in left_out:
            continue
        total += p.numel()
        if id(p) in removable:
            owned += int(removable[id(p)].sum())
    return owned / total if total else 0.0


def head_modules(model: nn.Module, plan: Plan) -> list[nn.Module]:
    """The output layers of ``model``: left out of the prunable share like the embeddings.

    A Hugging Face model's output embedding (``get_output_embeddings()``, the LM head) when it
    has one; otherwise the modules of the layers nearest to the model's first output (walking
    back from it, through any op without a weight, to the first ops that multiply by a 2-D+
    parameter: a classifier, a detection head, both projections of CLIP's logits).
    """
    getter: Callable[[], Any] | None = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        try:
            found = getter()
        except (NotImplementedError, AttributeError):
            found = None
        if isinstance(found, nn.Module):
            return [found]
    graph = plan.graph
    if not graph.user_outputs:
        return []
    owners: dict[int, nn.Module] = {}
    seen: set[fx.Node] = set()
    todo = [graph.user_outputs[0]]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        weights = [r for a in node.all_input_nodes if (r := _param_behind(graph.refs, a)) is not None]
        if any(r.tensor.dim() >= 2 for r in weights):
            owners.update((id(r.owner), r.owner) for r in weights)
            continue
        todo.extend(node.all_input_nodes)
    return list(owners.values())


def _param_behind(refs: dict[fx.Node, Any], node: fx.Node, depth: int = 4) -> Any:
    """The parameter a node reads, looking through a few one-input ops (transpose, fake-quant)."""
    for _ in range(depth):
        ref = refs.get(node)
        if ref is not None:
            return ref if ref.is_param else None
        if node.op != "call_function" or len(node.all_input_nodes) != 1:
            return None
        node = node.all_input_nodes[0]
    return None
