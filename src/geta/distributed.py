"""FSDP2 for a prepared model: `shard` applies ``fully_shard`` and rebinds the plan.

``torch.distributed.fsdp.fully_shard`` replaces every parameter it manages with a new DTensor
``nn.Parameter``, while a `geta.Plan` holds its parameters by identity (prune groups' slices,
weight-quantizer bindings). `shard` is the step that keeps the two together:

1. it records, for every parameter the plan refers to, the module and attribute that hold it
   (``named_parameters(recurse=False)`` of every module: no name matching);
2. it keeps the model's cost terms for the bit budget (capture needs the unsharded model);
3. it calls ``fully_shard(module, ignored_params=<the quantizers' scalars>, **kwargs)`` on each
   module in the order given (bottom-up, the root last): FSDP2 refuses 0-dim parameters, and a
   quantizer's scalars are tiny, so they stay replicated (`geta.QASSO` averages their gradients);
4. it reads the new parameter from each recorded (module, attribute) and rebinds the plan.

`geta.QASSO` built on the returned plan then steps the local shards (`geta.optim.sharding`).
`full_state_dict` gathers the trained model's full tensors (a collective: every rank calls it)
for `geta.convert` on a plain copy. See docs/distributed.md for a ``torchrun`` launch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from geta.errors import ConfigError
from geta.plan import Plan

__all__ = ["full_state_dict", "shard"]


def _quantizer_params(plan: Plan) -> set[nn.Parameter]:
    return {p for b in plan.bindings for p in b.quantizer.parameters()}


def shard(plan: Plan, modules: Sequence[nn.Module], **fully_shard_kwargs: Any) -> Plan:
    """Apply FSDP2's ``fully_shard`` to ``modules`` (bottom-up: e.g. each decoder layer, then the
    model) and rebind ``plan`` to the sharded parameters; returns ``plan`` (changed in place).

    Call it after `geta.prepare` and before building `geta.QASSO`, on every rank, with the
    process group initialised. ``fully_shard_kwargs`` go to every ``fully_shard`` call (``mesh``,
    ``reshard_after_forward``, ``mp_policy``, ...); ``ignored_params`` is extended with the
    quantizers' scalars, which stay replicated.

    >>> import geta
    >>> plan = geta.prepare(model, example_inputs, config)                 # doctest: +SKIP
    >>> geta.shard(plan, [*model.model.layers, model])                     # doctest: +SKIP
    >>> opt = geta.QASSO(plan, lr=1e-3, schedule=schedule)                 # doctest: +SKIP
    """
    if not modules:
        raise ConfigError("geta.shard(modules=[]) needs at least one module to shard (the root last)")
    from torch.distributed.fsdp import fully_shard

    from geta.reporting.count import layer_costs

    model = plan.model
    wanted = {id(s.tensor) for g in plan.groups for s in g.slices if s.is_param}
    wanted |= {id(b.tensor) for b in plan.bindings if b.tensor is not None}
    holders: dict[int, tuple[nn.Module, str]] = {}
    for module in model.modules():
        for attr, p in module.named_parameters(recurse=False):
            if id(p) in wanted:
                holders.setdefault(id(p), (module, attr))
    missing = wanted - holders.keys()
    if missing:
        raise ConfigError(f"geta.shard: {len(missing)} of the plan's parameters are not on plan.model")
    if plan.costs is None and plan.example_inputs is not None:
        plan.costs = layer_costs(model, plan.example_inputs)
    ignored = set(fully_shard_kwargs.pop("ignored_params", None) or ()) | _quantizer_params(plan)
    for module in modules:
        fully_shard(module, ignored_params=ignored, **fully_shard_kwargs)
    new = {key: getattr(module, attr) for key, (module, attr) in holders.items()}
    _rebind(plan, new)
    return plan


def _rebind(plan: Plan, new: dict[int, torch.Tensor]) -> None:
    """Point every slice, binding and cost term of ``plan`` at ``new[id(old tensor)]``."""

    def swap(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else new.get(id(t), t)

    for group in plan.groups:
        group.slices = tuple(dataclasses.replace(s, tensor=swap(s.tensor)) for s in group.slices)
    plan.bindings = [dataclasses.replace(b, tensor=swap(b.tensor)) for b in plan.bindings]
    if plan.costs is not None:
        plan.costs = [dataclasses.replace(c, weight=swap(c.weight)) for c in plan.costs]
    plan.__post_init__()  # the weight-quantizer map is keyed by tensor identity


@torch.no_grad()
def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every DTensor gathered into a full, plain CPU tensor.

    A collective: call it on every rank. Load the result into an unsharded copy of the model
    (prepared the same way) to `geta.convert`, export or save it.
    """
    out = {}
    for name, value in model.state_dict().items():
        if hasattr(value, "full_tensor"):
            value = value.full_tensor()
        out[name] = value.detach().cpu().clone()
    return out
