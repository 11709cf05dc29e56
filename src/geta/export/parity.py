"""The parity check of an ONNX file: onnxruntime's outputs against the torch model's.

`check_parity` runs the file in onnxruntime with its default (full) graph optimisations, i.e.
with the fused integer kernels a user would get, and compares with the torch model: the
largest relative difference max|onnx - torch| / max|torch| and the share of rows whose argmax
over the last dimension agrees. `geta.export.onnx` requires <= `PARITY_MAX_RELATIVE_DIFF` and
>= `PARITY_MIN_ARGMAX`. A NaN or infinity in onnxruntime's output where torch has a finite
value counts as an infinite difference.

One session setting, `ORT_SESSION_CONFIG`, is part of the check (and recorded in every file
geta writes): onnxruntime rewrites a weight-only quantized MatMul (float input, DequantizeLinear
weight, e.g. a transformer projection without an input quantizer) into ``MatMulNBits`` whose
default ``accuracy_level`` 4 quantizes the *activations* to int8 at run time: an approximation
the model never had (about 1 % off on the zoo's attention model). Level 0 computes them in
float and is exact; pass the same entry to ``SessionOptions.add_session_config_entry`` when
deploying. onnxruntime is imported only when a check runs.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from geta.export.info import ExportError, ExportInfo
from geta.graph.capture import normalize_inputs

__all__ = [
    "ORT_SESSION_CONFIG",
    "PARITY_MAX_RELATIVE_DIFF",
    "PARITY_MIN_ARGMAX",
    "check_parity",
    "mismatch_message",
    "run_eval",
]

PARITY_MAX_RELATIVE_DIFF = 1e-3
PARITY_MIN_ARGMAX = 0.99
ORT_SESSION_CONFIG = {"session.qdq_matmulnbits_accuracy_level": "0"}  # float activations in MatMulNBits


def mismatch_message(
    model: nn.Module,
    example_inputs: object,
    file: str | os.PathLike[str],
    info: ExportInfo,
    saturation_safe: bool,
) -> str:
    """Say how far off the ``file`` is, and whether the graph itself or the runtime's kernels are.

    ``example_inputs`` are the inputs it was off on; ``info`` holds the measured parity.
    """
    plain, _ = check_parity(model, example_inputs, file, optimize=False)
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
        f"the ONNX export to {info.path} does not reproduce the torch model in onnxruntime: max "
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


def run_eval(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
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
    return [t.detach().float().cpu().numpy() for t in _tensors(run_eval(model, args, kwargs))]


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
    options.log_severity_level = 4  # fatal only: the library stays silent (errors are raised)
    for key, value in ORT_SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    args, kwargs = normalize_inputs(example_inputs)
    names = [i.name for i in session.get_inputs()]
    feeds = _feeds(model, args, kwargs, names)
    try:
        got = session.run(None, feeds)
    except Exception as exc:  # e.g. a fixed dimension that the inputs do not have
        shapes = {n: list(v.shape) for n, v in feeds.items()}
        raise ExportError(
            f"onnxruntime cannot run the ONNX file on inputs of shapes {shapes}: {str(exc).splitlines()[0]}"
        ) from None
    expected = _torch_outputs(model, args, kwargs)
    if len(got) != len(expected):
        raise ExportError(f"the ONNX file has {len(got)} outputs, the torch model {len(expected)}")
    rel, rows, agree = 0.0, 0, 0
    for i, (a, b) in enumerate(zip(got, expected)):
        if tuple(np.shape(a)) != b.shape:
            raise ExportError(
                f"output {i} of the ONNX file has shape {list(np.shape(a))}, torch's {list(b.shape)}"
            )
        rel = max(rel, _relative_difference(np.asarray(a, dtype=np.float64), b.astype(np.float64)))
        if b.ndim >= 2 and b.shape[-1] >= 2:
            rows += b.size // b.shape[-1]
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
    return rel, (agree / rows if rows else 1.0)


def _relative_difference(got: np.ndarray, expected: np.ndarray) -> float:
    """max|got - expected| / max|expected| over the entries where ``expected`` is finite; a
    non-finite ``got`` there is an infinite difference (NaN must not compare as equal)."""
    finite = np.isfinite(expected)
    if not finite.any():
        return 0.0
    a, b = got[finite], expected[finite]
    if not np.isfinite(a).all():
        return float("inf")
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))
