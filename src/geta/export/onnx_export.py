"""`geta.export.onnx`: a QDQ ONNX file of a quantized model that runs at any batch and sequence
length, checked in onnxruntime.

The model is first turned into its deployment form (`geta.export.qdq.deployable`: integer
weight codes + DequantizeLinear, QuantizeLinear/DequantizeLinear on layer inputs, with the
learned steps as scales), then written by the dynamo exporter (``torch.onnx.export(...,
dynamo=True)``) with symbolic ``batch`` and ``sequence`` axes (`geta.export.interface`).
On request (``integer_convolutions=True``) the convolutions that onnxruntime would run in
float on dequantized weights are rewritten into ``ConvInteger`` (`geta.export.integer_ops`). A
JSON record of every quantized tensor
(`ExportInfo.to_dict`) is stored in the file's ``metadata_props["geta"]``.

The parity check (``check=True``, `geta.export.parity`) runs the file in onnxruntime on the
example inputs and, when the file has dynamic axes, on the example resized along them (one
more row, one token fewer), and compares with the *original* torch model. The file is written
next to ``path`` and moved there only when the check passes: a failed export leaves nothing
behind (and an older file at ``path`` untouched).

onnx, onnxruntime and onnxscript are imported only when this is called
(``pip install 'torch-geta[onnx]'``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geta.export.info import ExportError, ExportInfo
from geta.export.integer_ops import integer_convolutions as rewrite_convolutions
from geta.export.interface import (
    BATCH_DIM_NAME,
    SEQUENCE_DIM_NAME,
    batch_shapes,
    dynamic_dims,
    output_names,
    resized,
)
from geta.export.parity import (
    ORT_SESSION_CONFIG,
    PARITY_MAX_RELATIVE_DIFF,
    PARITY_MIN_ARGMAX,
    check_parity,
    mismatch_message,
    run_eval,
)
from geta.export.qdq import deployable
from geta.graph.capture import normalize_inputs

__all__ = ["ORT_SESSION_CONFIG", "PARITY_MAX_RELATIVE_DIFF", "PARITY_MIN_ARGMAX", "check_parity", "onnx"]

# torch's per-node debug records (stack traces with local paths, fx nodes, class lists): about
# two thirds of a small model's file; the module namespace and name scopes are kept
_DEBUG_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node", "pkg.torch.onnx.class_hierarchy")


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
    model: nn.Module, example_inputs: object, path: str | os.PathLike[str], *,
    opset: int | None = None, check: bool = True, saturation_safe: bool = True,
    dynamic_batch: bool = True, dynamic_sequence: bool = True, dynamic_shapes: Any = None,
    fold_batchnorm: bool = True, integer_convolutions: bool = False,
) -> ExportInfo:  # fmt: skip
    """Export ``model`` (with geta quantizers) to ``path`` as an ONNX QDQ graph.

    The file's inputs carry the names of ``forward``'s arguments and its outputs are named from
    what the model returns (``"output"``, or a dict's keys such as a Hugging Face model's
    ``"logits"``; see `geta.export.interface`). With ``dynamic_batch`` dim 0 of every input is
    a symbolic ``"batch"`` dimension, with ``dynamic_sequence`` dim 1 of every integer input of
    two or more dims (token ids, attention masks) a symbolic ``"sequence"``, so the file runs
    at any batch size and length whatever the example's were (a model that fixes its length
    keeps a fixed one: the export then falls back to a dynamic batch only, see
    ``ExportInfo.dynamic_axes``). ``dynamic_shapes`` (passed to ``torch.onnx.export``)
    replaces these rules when given. A model without geta quantizers is exported as a plain
    float graph.

    ``fold_batchnorm`` folds each BatchNorm that follows a convolution into it (exactly; see
    `geta.export.qdq.deployable`), so that onnxruntime can run the convolution on integers;
    ``integer_convolutions`` writes the quantized convolutions that onnxruntime would still run
    in float (e.g. those feeding a residual add) as ``ConvInteger`` (`geta.export.integer_ops`):
    every quantized convolution then runs on integers, exactly, but onnxruntime's CPU
    ``ConvInteger`` is slower than its float ``Conv`` (for runtimes that need integer-only graphs).
    ``opset`` is the ai.onnx opset (None: the exporter's default). ``saturation_safe`` stores
    full-range 8-bit weights as uint8 with zero point 128 so that onnxruntime stays exact on
    AVX2 CPUs without VNNI (see `geta.export.qdq`). Returns an `ExportInfo`; raises
    `ExportError` if the export fails or (``check``) the file does not reproduce the torch
    model in onnxruntime, and then writes nothing; ``ImportError`` without onnx, onnxruntime
    or onnxscript (``pip install 'torch-geta[onnx]'``).

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
    program = _exported(model, deploy, args, kwargs, opset=opset, shapes=dynamic_shapes,
                        batch=dynamic_batch, sequence=dynamic_sequence)  # fmt: skip
    rewritten = rewrite_convolutions(program.model) if integer_convolutions else 0
    axes = _symbolic_axes(program.model.graph)
    info = ExportInfo(os.fspath(path), program.model.opset_imports.get(""), tensors, dynamic_axes=axes,
                      integer_convolutions=rewritten)  # fmt: skip
    return _published(program, info, path, model, example_inputs, check, saturation_safe)


def _exported(
    model: nn.Module, deploy: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], *,
    opset: int | None, shapes: Any, batch: bool, sequence: bool,
) -> Any:  # fmt: skip
    """The ONNX program of ``deploy``: with the given dynamic ``shapes`` (`_torch_export`), else
    with the ``batch`` / ``sequence`` axes (`_dynamic_export`); its outputs named from what the
    model returns (`geta.export.interface.output_names`)."""
    names = output_names(run_eval(deploy, args, kwargs))
    if shapes is not None:
        program = _torch_export(model, deploy, args, kwargs, opset=opset, shapes=shapes)
    else:
        program = _dynamic_export(model, deploy, args, kwargs, opset, batch, sequence)
    _name_outputs(program.model.graph, names)
    return program


def _published(
    program: Any, info: ExportInfo, path: str | os.PathLike[str], model: nn.Module,
    example_inputs: object, check: bool, saturation_safe: bool,
) -> ExportInfo:  # fmt: skip
    """Write ``program`` to ``path`` (`_save`, `_staged`); with ``check`` only if onnx's checker
    and the parity check (`_checked`) pass. Returns ``info`` with the parity when checked."""
    with _staged(path) as file:
        _save(program, info, file)
        if check:
            importlib.import_module("onnx").checker.check_model(os.fspath(file))
            info = _checked(model, example_inputs, file, info, saturation_safe)
    return info


@contextlib.contextmanager
def _staged(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A file path in a fresh folder next to ``path``; its files move to ``path``'s folder only
    if the block succeeds (an exporter's external ``.data`` file with it). The folder goes."""
    final = Path(path)
    folder = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield folder / final.name
        for file in folder.iterdir():
            os.replace(file, final.parent / file.name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _sizes(args: tuple[Any, ...], kwargs: dict[str, Any], *, batch: bool, sequence: bool) -> dict[str, int]:
    """The example's size of each symbolic dim (`geta.export.interface.dynamic_dims`)."""
    sizes: dict[str, int] = {}
    for t in _leaves((args, kwargs)):
        for d, name in dynamic_dims(t, batch=batch, sequence=sequence).items():
            sizes.setdefault(name, int(t.shape[d]))
    return sizes


def _leaves(value: object) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _leaves(v)


def _dynamic_export(
    model: nn.Module, deploy: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
    opset: int | None, batch: bool, sequence: bool,
) -> Any:  # fmt: skip
    """Export with the requested symbolic axes; without the sequence axis if the model fixes it.

    The graph is traced on the example repeated to at least 2 along each symbolic axis (torch
    fixes a dimension whose example size is 0 or 1), and the axes must stay symbolic.
    """
    wanted = _sizes(args, kwargs, batch=batch, sequence=sequence)
    attempts = [wanted] + ([{k: v for k, v in wanted.items() if k != SEQUENCE_DIM_NAME}]
                           if SEQUENCE_DIM_NAME in wanted else [])  # fmt: skip
    error: ExportError | None = None
    for sizes in attempts:
        shapes = batch_shapes(deploy, args, kwargs, batch=BATCH_DIM_NAME in sizes,
                              sequence=SEQUENCE_DIM_NAME in sizes) if sizes else None  # fmt: skip
        trace_args, trace_kwargs = resized((args, kwargs), {k: max(v, 2) for k, v in sizes.items()})
        try:
            program = _torch_export(model, deploy, trace_args, trace_kwargs, opset=opset, shapes=shapes)
            fixed = set(sizes) - {
                n for axes in _symbolic_axes(program.model.graph).values() for n in axes.values()
            }
            if fixed:
                raise ExportError(
                    f"torch.onnx.export fixed the {sorted(fixed)} axis of {type(model).__name__}; if the "
                    "model needs a fixed size (e.g. a reshape to a constant), pass dynamic_batch=False "
                    "or dynamic_sequence=False"
                )
            return program
        except ExportError as exc:
            error = exc
    assert error is not None
    raise error


def _symbolic_axes(graph: Any) -> dict[str, dict[int, str]]:
    """The symbolic dims of the graph's inputs (an onnx-ir graph), by input name."""
    axes: dict[str, dict[int, str]] = {}
    for value in graph.inputs:
        dims = {d: str(dim) for d, dim in enumerate(value.shape or ()) if not isinstance(dim, int)}
        if dims:
            axes[value.name] = dims
    return axes


def _checked(
    model: nn.Module, example_inputs: object, file: Path, info: ExportInfo, saturation_safe: bool
) -> ExportInfo:
    """``info`` with the parity of ``file`` at the example's shape and, along the file's
    symbolic axes, at another one; `ExportError` (with the reason) if either is off."""
    args, kwargs = normalize_inputs(example_inputs)
    named = {n for axes in info.dynamic_axes.values() for n in axes.values()}
    sizes = _sizes(args, kwargs, batch=BATCH_DIM_NAME in named, sequence=SEQUENCE_DIM_NAME in named)
    other = {k: v + 1 if k == BATCH_DIM_NAME or v <= 2 else v - 1 for k, v in sizes.items()}
    worst = (0.0, 1.0, example_inputs)
    for inputs in [example_inputs] + ([resized(example_inputs, other)] if other else []):
        rel, agree = check_parity(model, inputs, file)
        if rel > worst[0] or agree < worst[1]:
            worst = (max(rel, worst[0]), min(agree, worst[1]), inputs)
    info = dataclasses.replace(info, max_relative_diff=worst[0], argmax_agreement=worst[1])
    if worst[0] > PARITY_MAX_RELATIVE_DIFF or worst[1] < PARITY_MIN_ARGMAX:
        raise ExportError(
            mismatch_message(model, worst[2], file, info, saturation_safe) + "; no file written"
        )
    return info


def _torch_export(
    model: nn.Module, deploy: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], *,
    opset: int | None, shapes: Any,
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
            "does the model export with torch.onnx.export(dynamo=True) without geta?"
            if shapes is None
            else "if the model fixes its batch size or length (e.g. a reshape to a constant), pass "
            "dynamic_batch=False or dynamic_sequence=False"
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


def _save(program: torch.onnx.ONNXProgram, info: ExportInfo, file: Path) -> None:
    """Write ``file`` with geta's records in its metadata and without torch's debug records."""
    for node in program.model.graph.all_nodes():
        for key in _DEBUG_METADATA:
            node.metadata_props.pop(key, None)
    program.model.metadata_props["geta"] = json.dumps(info.to_dict())
    program.model.metadata_props["geta.onnxruntime_session_config"] = json.dumps(ORT_SESSION_CONFIG)
    program.save(os.fspath(file))
