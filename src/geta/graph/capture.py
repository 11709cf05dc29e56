"""Capture a model as a `Graph` with `torch.export` (non-strict, public APIs only)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import fx, nn

from geta.errors import CaptureError
from geta.graph.ir import Graph, TensorRef

__all__ = ["capture", "normalize_inputs", "run_model", "on_meta", "eval_mode"]

ExampleInputs = tuple[Any, ...] | Mapping[str, Any]


def normalize_inputs(example_inputs: object) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Split example inputs into (args, kwargs); a tuple is positional, a dict is keyword."""
    if isinstance(example_inputs, torch.Tensor):
        raise CaptureError(
            "example_inputs must be a tuple of positional inputs or a dict of keyword inputs, got a "
            "bare Tensor; pass (x,) instead of x"
        )
    if isinstance(example_inputs, tuple):
        return example_inputs, {}
    if isinstance(example_inputs, list):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, Mapping):
        if not all(isinstance(k, str) for k in example_inputs):
            raise CaptureError("example_inputs dict keys must be argument names (str)")
        return (), dict(example_inputs)
    raise CaptureError(
        f"example_inputs must be a tuple of positional inputs or a dict of keyword inputs, got "
        f"{type(example_inputs).__name__}; e.g. (torch.randn(1, 3, 32, 32),) or {{'input_ids': ids}}"
    )


def on_meta(model: nn.Module) -> bool:
    """True for a model built on the meta device (shapes only, no weights)."""
    return any(p.is_meta for p in model.parameters())


def run_model(model: nn.Module, example_inputs: object) -> Any:
    args, kwargs = normalize_inputs(example_inputs)
    return model(*args, **kwargs)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.train(mode)


def _owners(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    """id(tensor) -> (module that directly holds it, attribute name)."""
    owners: dict[int, tuple[nn.Module, str]] = {}
    for mod in model.modules():
        for attr, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), (mod, attr))
        for attr, b in mod.named_buffers(recurse=False):
            if b is not None:
                owners.setdefault(id(b), (mod, attr))
    return owners


def _check_forward(model: nn.Module, example_inputs: object) -> None:
    try:
        with torch.no_grad():
            run_model(model, example_inputs)
    except Exception as exc:  # the user's own forward failed: say so, with its message
        raise CaptureError(
            f"the model's own forward failed on the example inputs ({type(exc).__name__}: {exc}); "
            "pass inputs the model accepts, e.g. the shape and dtype of one training batch"
        ) from exc


def capture(model: nn.Module, example_inputs: object, *, check_forward: bool = True) -> Graph:
    """Capture ``model`` called on ``example_inputs`` as an ATen-level `Graph` (eval mode)."""
    args, kwargs = normalize_inputs(example_inputs)
    kwargs = _without_cache(model, kwargs)
    with eval_mode(model):
        try:
            program = torch.export.export(model, args, kwargs, strict=False)
        except Exception as exc:
            # the user's own forward failing says more than torch.export's trace: check it (only
            # now, so that a successful capture costs no extra forward)
            if check_forward and not on_meta(model):  # eager code may not run on meta (HF masks)
                _check_forward(model, example_inputs)
            raise CaptureError(
                f"torch.export could not capture {type(model).__name__} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); geta needs a model whose forward "
                "torch.export(strict=False) can trace: avoid data-dependent Python control flow "
                "on tensor values, or exclude that part of the model"
            ) from exc
    return _bind(model, program)


def _without_cache(model: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Ask models with a key/value cache (HF causal LMs) not to return it while capturing.

    A cache is an output object torch.export cannot flatten, and its tensors would pin the k/v
    projections as "feeding the output". Analysis needs the computation, not the cache.
    """
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return kwargs
    if "use_cache" in params and "use_cache" not in kwargs:
        return {**kwargs, "use_cache": False}
    return kwargs


def _bind(model: nn.Module, program: torch.export.ExportedProgram) -> Graph:
    sig = program.graph_signature
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update({k: v for k, v in model.named_buffers(remove_duplicate=False) if v is not None})
    owners = _owners(model)
    refs: dict[fx.Node, TensorRef] = {}
    user_inputs: list[fx.Node] = []
    targets = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    for node in program.graph.nodes:
        if node.op != "placeholder":
            continue
        fqn = targets.get(node.name)
        if fqn is None:
            if node.name in sig.user_inputs:
                user_inputs.append(node)
            continue
        tensor = named.get(fqn)
        if tensor is None:
            continue
        owner, attr = owners[id(tensor)]
        refs[node] = TensorRef(
            tensor, display_name(fqn), owner, attr, fqn in sig.inputs_to_parameters.values()
        )
    out_node = next(n for n in program.graph.nodes if n.op == "output")
    flat = out_node.args[0] if isinstance(out_node.args[0], (tuple, list)) else (out_node.args[0],)
    user_outputs = [a for a in flat if isinstance(a, fx.Node)]
    paths: dict[fx.Node, str] = {}
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:
            paths[node] = _path_of(list(stack.values())[-1][0])
    return Graph(program, refs, user_inputs, user_outputs, paths)


def display_name(name: str) -> str:
    """'conv.parametrizations.weight.original' -> 'conv.weight'."""
    marker = ".parametrizations."
    if marker in name and name.endswith(".original"):
        head, tail = name.split(marker, 1)
        return f"{head}.{tail[: -len('.original')]}"
    return name


def _path_of(key: str) -> str:
    """Turn an nn_module_stack entry (e.g. "L['self'].layers[0].attn") into "layers.0.attn"."""
    path = key.replace("L['self']", "").replace("['", ".").replace("']", "").replace("[", ".")
    return path.replace("]", "").lstrip(".")
