"""`geta.export.onnx`: a QDQ ONNX file of a quantized model, checked in onnxruntime.

The model is first turned into its deployment form (`geta.export.qdq.deployable`: integer
weight codes + DequantizeLinear, QuantizeLinear/DequantizeLinear on layer inputs, with the
learned steps as scales), then written by the dynamo exporter (``torch.onnx.export(...,
dynamo=True)``). A JSON record of every quantized tensor (`ExportInfo.to_dict`) is stored in
the file's ``metadata_props["geta"]``.

The parity check (``check=True``) runs the file in onnxruntime with its default (full)
graph optimisations, i.e. with the fused integer kernels a user would get, on the example
inputs, and compares with the *original* torch model: the largest relative difference
max|onnx - torch| / max|torch| must be <= `PARITY_MAX_RELATIVE_DIFF` and the argmax over the
last dimension must agree on >= `PARITY_MIN_ARGMAX` of the rows; otherwise `ExportError`.

One session setting, `ORT_SESSION_CONFIG`, is part of the check and is recorded in the file
(``metadata_props["geta.onnxruntime_session_config"]``): onnxruntime rewrites a weight-only
quantized MatMul (float input, DequantizeLinear weight, e.g. a transformer projection without
an input quantizer) into ``MatMulNBits`` whose default ``accuracy_level`` 4 quantizes the
*activations* to int8 at run time — an approximation the model never had (about 1 % off on
the zoo's attention model). Level 0 computes them in float and is exact; pass the same entry
to ``SessionOptions.add_session_config_entry`` when deploying.

onnx, onnxruntime and onnxscript are imported only when this is called
(``pip install 'torch-geta[onnx]'``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from geta.export.info import ExportError, ExportInfo
from geta.export.interface import batch_shapes, output_names
from geta.export.qdq import deployable
from geta.graph.capture import normalize_inputs

__all__ = ["ORT_SESSION_CONFIG", "PARITY_MAX_RELATIVE_DIFF", "PARITY_MIN_ARGMAX", "check_parity", "onnx"]

PARITY_MAX_RELATIVE_DIFF = 1e-3
PARITY_MIN_ARGMAX = 0.99
# torch's per-node debug records (stack traces with local paths, fx nodes, class lists): about
# two thirds of a small model's file; the module namespace and name scopes are kept
_DEBUG_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node", "pkg.torch.onnx.class_hierarchy")
ORT_SESSION_CONFIG = {"session.qdq_matmulnbits_accuracy_level": "0"}  # float activations in MatMulNBits


@contextlib.contextmanager
def _exporter_logs_quiet() -> Iterator[None]:
    """Raise the ``torch.onnx`` logger to ERROR for the export call only (restored after)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def onnx(
    model: nn.Module,
    example_inputs: object,
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    check: bool = True,
    saturation_safe: bool = True,
    dynamic_batch: bool = True,
    dynamic_shapes: Any = None,
    fold_batchnorm: bool = True,
) -> ExportInfo:
    """Export ``model`` (with geta quantizers) to ``path`` as an ONNX QDQ graph.

    The file's inputs carry the names of ``forward``'s arguments and its outputs are named from
    what the model returns (``"output"``, or a dict's keys such as ``"logits"``; see
    `geta.export.interface`). With ``dynamic_batch`` dim 0 of every input is a symbolic
    ``"batch"`` dimension, so the file runs at any batch size; ``dynamic_shapes`` (passed to
    ``torch.onnx.export``) replaces that rule when given. A model without geta quantizers is
    exported as a plain float graph.

    ``fold_batchnorm`` folds each BatchNorm that follows a convolution into it (exactly; see
    `geta.export.qdq.deployable`), so that onnxruntime can run the convolution on integers.
    ``opset`` is the ai.onnx opset (None: the exporter's default). ``saturation_safe`` stores
    full-range 8-bit weights as uint8 with zero point 128 so that onnxruntime stays exact on
    AVX2 CPUs without VNNI (see `geta.export.qdq`). Returns an `ExportInfo`; raises
    `ExportError` if the export fails or (``check``) the file does not reproduce the torch model
    in onnxruntime; ``ImportError`` without onnx, onnxruntime or onnxscript
    (``pip install 'torch-geta[onnx]'``).

    Load it with the session setting recorded in the file (`ORT_SESSION_CONFIG`)::

        options = onnxruntime.SessionOptions()
        for key, value in geta.export.ORT_SESSION_CONFIG.items():
            options.add_session_config_entry(key, value)
        session = onnxruntime.InferenceSession("model.onnx", options)
        logits = session.run(["output"], {"x": images})[0]  # any batch size
    """
    args, kwargs = normalize_inputs(example_inputs)
    deploy, tensors = deployable(
        model, example_inputs, saturation_safe=saturation_safe, fold_batchnorm=fold_batchnorm
    )
    names = output_names(_run(deploy, args, kwargs))
    auto_batch = dynamic_shapes is None and dynamic_batch
    shapes = batch_shapes(deploy, args, kwargs) if auto_batch else dynamic_shapes
    program = _torch_export(model, deploy, args, kwargs, opset=opset, shapes=shapes, auto_batch=auto_batch)
    if program is None:  # only possible with dynamo=False
        raise ExportError("torch.onnx.export returned no program")
    _name_outputs(program.model.graph, names)
    info = ExportInfo(os.fspath(path), program.model.opset_imports.get(""), tensors)
    _save(program, info)
    if not check:
        return info
    importlib.import_module("onnx").checker.check_model(os.fspath(path))
    rel, agree = check_parity(model, example_inputs, path)
    info = dataclasses.replace(info, max_relative_diff=rel, argmax_agreement=agree)
    if rel > PARITY_MAX_RELATIVE_DIFF or agree < PARITY_MIN_ARGMAX:
        raise ExportError(_mismatch_message(model, example_inputs, info, saturation_safe))
    return info


def _torch_export(
    model: nn.Module, deploy: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], *,
    opset: int | None, shapes: Any, auto_batch: bool,
) -> Any:  # fmt: skip
    """``torch.onnx.export(dynamo=True)`` of ``deploy``, quietly; failures as `ExportError`."""
    try:
        with warnings.catch_warnings(), _exporter_logs_quiet():
            # torch.onnx's own progress notes and deprecation warnings are about torch, not about
            # the user's model: a silent library keeps them off the user's console
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            # one shared "batch" dim over several inputs: torch says it renames the axis once
            warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
            return torch.onnx.export(
                deploy, args, kwargs=kwargs or None, dynamo=True, opset_version=opset,
                dynamic_shapes=shapes, verbose=False,
            )  # fmt: skip
    except ImportError:
        raise  # onnxscript missing: pip install 'torch-geta[onnx]'
    except Exception as exc:
        hint = (
            "if the model fixes its batch size (e.g. a reshape to a constant), pass dynamic_batch=False"
            if auto_batch
            else "does the model export with torch.onnx.export(dynamo=True) without geta?"
        )
        raise ExportError(
            f"torch.onnx.export failed on {type(model).__name__} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); {hint}"
        ) from exc


def _name_outputs(graph: Any, names: list[str]) -> None:
    """Rename the graph's outputs (an onnx-ir graph) to ``names`` where that is unambiguous.

    Left as the exporter named them when the counts differ (a non-tensor leaf in the outputs),
    when an output is itself a graph input, or when a name is already taken inside the graph.
    """
    outputs = list(graph.outputs)
    if len(outputs) != len(names) or any(v in list(graph.inputs) for v in outputs):
        return
    taken = {v.name for node in graph.all_nodes() for v in node.outputs if v not in outputs}
    taken |= {v.name for v in graph.inputs} | set(graph.initializers)
    if taken & set(names):
        return
    for value, name in zip(outputs, names):
        value.name = name


def _save(program: torch.onnx.ONNXProgram, info: ExportInfo) -> None:
    """Write the file with geta's records in its metadata and without torch's debug records."""
    for node in program.model.graph.all_nodes():
        for key in _DEBUG_METADATA:
            node.metadata_props.pop(key, None)
    program.model.metadata_props["geta"] = json.dumps(info.to_dict())
    program.model.metadata_props["geta.onnxruntime_session_config"] = json.dumps(ORT_SESSION_CONFIG)
    program.save(info.path)


def _mismatch_message(
    model: nn.Module, example_inputs: object, info: ExportInfo, saturation_safe: bool
) -> str:
    """Say how far off the file is, and whether the graph itself or the runtime's kernels are."""
    plain, _ = check_parity(model, example_inputs, info.path, optimize=False)
    hints = []
    if info.limited:
        hints.append(
            f"tensors whose real bits were rounded down: {[t.name for t in info.limited]} "
            "(freeze integer bits, e.g. QASSO's cool-down, before exporting)"
        )
    if plain <= PARITY_MAX_RELATIVE_DIFF:
        hints.append(
            "the graph itself matches (without onnxruntime's optimisations the difference is "
            f"{plain:.3g}): the runtime's integer kernels differ, e.g. its int32 rounding of "
            "biases when the outputs are tiny"
            + ("" if saturation_safe else ", or u8s8 saturation: export with saturation_safe=True")
        )
    return (
        f"the ONNX file {info.path} does not reproduce the torch model in onnxruntime: max "
        f"relative difference {info.max_relative_diff:.3g} (allowed {PARITY_MAX_RELATIVE_DIFF}), "
        f"argmax agreement {info.argmax_agreement:.1%} (needed {PARITY_MIN_ARGMAX:.0%}); "
        + "; ".join(hints or ["the exported graph differs from the torch model"])
    )


def _tensors(value: object) -> Iterator[Tensor]:
    """Tensors of a nested output, depth first, dict values in insertion order (as ONNX flattens)."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)


def _feeds(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], names: list[str]
) -> dict[str, Any]:
    """onnxruntime inputs: by argument name when the names match, else by position."""
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs).arguments
    except (TypeError, ValueError):
        bound = {}
    if all(isinstance(bound.get(n), Tensor) for n in names):
        return {n: bound[n].detach().cpu().numpy() for n in names}
    flat = [t for t in _tensors((args, kwargs))]
    if len(flat) != len(names):
        raise ExportError(f"cannot match the ONNX inputs {names} with {len(flat)} example input tensors")
    return {n: t.detach().cpu().numpy() for n, t in zip(names, flat)}


def _run(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``model(*args, **kwargs)`` in eval mode without gradients; train/eval modes restored."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            return model(*args, **kwargs)
    finally:
        for m, mode in modes.items():
            m.train(mode)


def _torch_outputs(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[np.ndarray]:
    return [t.detach().float().cpu().numpy() for t in _tensors(_run(model, args, kwargs))]


def check_parity(
    model: nn.Module, example_inputs: object, path: str | os.PathLike[str], *, optimize: bool = True
) -> tuple[float, float]:
    """(max relative difference, argmax agreement) of the ONNX file vs ``model`` in eval mode.

    The relative difference of each output is max|onnx - torch| / max|torch|; the argmax is
    taken over the last dimension of every output with at least two dims and two entries.
    ``optimize``: onnxruntime's default graph optimisations (fused integer kernels), else none.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the library stays silent
    for key, value in ORT_SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    args, kwargs = normalize_inputs(example_inputs)
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, _feeds(model, args, kwargs, names))
    expected = _torch_outputs(model, args, kwargs)
    if len(got) != len(expected):
        raise ExportError(f"the ONNX file has {len(got)} outputs, the torch model {len(expected)}")
    rel, rows, agree = 0.0, 0, 0
    for a, b in zip(got, expected):
        a = np.asarray(a, dtype=np.float64).reshape(b.shape)
        b = b.astype(np.float64)
        if b.size:
            rel = max(rel, float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)))
        if b.ndim >= 2 and b.shape[-1] >= 2:
            rows += b.size // b.shape[-1]
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
    return rel, (agree / rows if rows else 1.0)
