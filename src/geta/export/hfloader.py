"""`load_pretrained`: a model back from a folder written by `geta.export.pretrained`.

The folder's config builds the architecture on ``meta`` (`geta.export.hfformat.build_meta`);
the tensors the "geta" field lists are resized to their recorded shapes, the size attributes
updated (spec rules, then the recorded values, then geta's module fixers), the meta buffers
computed by HF, the safetensors loaded with ``assign=True`` (integer codes decoded,
`geta.export.intweights`; every file checked against `geta.export.hfformat.CHECKSUMS`), and
the activation quantizers attached again (`geta.export.hfquantizers`). The result computes what
the saved model computed.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from geta.export.hfformat import CHECKSUMS, FIELD, FORMAT_VERSION, build_meta, import_transformers
from geta.export.hfquantizers import attach_inputs, attach_products
from geta.export.info import ExportError
from geta.export.intweights import decode, is_integer_config
from geta.integrity import member_path, verify_file
from geta.ops.modules import apply_module_fixers, apply_size_rules
from geta.savehook import guard_save_pretrained

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["load_pretrained"]


def _read_field(folder: str) -> dict[str, Any]:
    """The "geta" field of ``folder/config.json``."""
    config_file = os.path.join(folder, "config.json")
    try:
        with open(config_file, encoding="utf-8") as f:
            info = json.load(f).get(FIELD)
    except FileNotFoundError as exc:
        raise ExportError(f"{folder} has no config.json; is it a save_pretrained folder?") from exc
    if not isinstance(info, dict):
        raise ExportError(
            f"{config_file} has no {FIELD!r} field: it was not written by geta.export.pretrained; "
            "load it with transformers' from_pretrained"
        )
    if info.get("format") != FORMAT_VERSION:
        raise ExportError(f"{config_file}: geta format {info.get('format')!r}; geta reads {FORMAT_VERSION}")
    return info


def _architecture(hf: ModuleType, config: Any, folder: str) -> type[PreTrainedModel]:
    """The model class named by ``config.architectures`` (as AutoModel* would pick it)."""
    names = list(getattr(config, "architectures", None) or [])
    cls = getattr(hf, names[0], None) if names else None
    if not (isinstance(cls, type) and issubclass(cls, hf.PreTrainedModel)):
        raise ExportError(
            f"{folder}/config.json names no transformers model class (architectures={names}); "
            "pass model_class=... to load_pretrained"
        )
    return cls


def _resize(model: nn.Module, shapes: dict[str, list[int]]) -> None:
    """Replace each listed tensor by an empty meta tensor of its recorded shape (ties kept)."""
    replaced: dict[int, torch.Tensor] = {}
    for key, shape in shapes.items():
        owner_name, _, attr = key.rpartition(".")
        owner = model.get_submodule(owner_name)
        old = getattr(owner, attr)
        new = replaced.get(id(old))
        if new is None:
            new = torch.empty(shape, dtype=old.dtype, device="meta")
            if isinstance(old, nn.Parameter):
                new = nn.Parameter(new, requires_grad=old.requires_grad)
            replaced[id(old)] = new
        setattr(owner, attr, new)  # a parameter stays a parameter, a buffer a buffer


def _update_sizes(model: nn.Module, attributes: dict[str, dict[str, Any]]) -> None:
    """Size attributes from the weights' shapes, then the recorded ones, then geta's fixers."""
    apply_size_rules(model)  # each module spec's ``sizes``: e.g. nn.Linear's out/in_features
    for name, attrs in attributes.items():
        module = model.get_submodule(name)
        for attr, value in attrs.items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
    apply_module_fixers(model)  # e.g. GPT-2 attention's split_size and num_heads


def _init_buffers(model: nn.Module, hf: ModuleType) -> None:
    """Materialise the meta buffers on the CPU and let HF compute them (rotary inv_freq, ...).

    Runs before the weights are loaded: the owners' parameters are still on meta, so HF's
    ``_init_weights`` (what its own ``from_pretrained`` uses for buffers) changes nothing else.
    Persistent buffers are then overwritten by the checkpoint.
    """
    init_of: dict[nn.Module, Any] = {}
    for sub in model.modules():  # pre-order: an inner PreTrainedModel overrides its parent
        if isinstance(sub, hf.PreTrainedModel):
            init_of.update({m: sub for m in sub.modules()})
    for module in model.modules():
        meta = [(n, b) for n, b in module.named_buffers(recurse=False) if b.is_meta]
        for name, buf in meta:
            setattr(module, name, torch.empty_like(buf, device="cpu"))
        if meta:
            init_of[module]._init_weights(module)


def _read_weights(folder: str, quantization: object = None) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` (or of every shard listed by its index), float.

    Integer codes (``quantization`` is the config's compressed-tensors ``quantization_config``
    written by `pretrained`) are decoded to their values k·step (`geta.export.intweights`).
    """
    state = _read_safetensors(folder)
    return decode(state, quantization) if is_integer_config(quantization) else state  # type: ignore[arg-type]


def _read_file(folder: str, name: str, what: str) -> dict[str, torch.Tensor]:
    """One safetensors file of ``folder``, kept inside it and checked against `CHECKSUMS`."""
    from safetensors.torch import load_file

    path = member_path(folder, name, what=what)
    verify_file(folder, name, CHECKSUMS, load_tensors=load_file)
    return load_file(path)


def _read_safetensors(folder: str) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors``, or of every shard listed by its index."""
    if os.path.exists(os.path.join(folder, "model.safetensors")):
        return _read_file(folder, "model.safetensors", f"{folder}")
    index = os.path.join(folder, "model.safetensors.index.json")
    if not os.path.exists(index):
        raise ExportError(f"{folder} has no model.safetensors; write it with geta.export.pretrained")
    verify_file(folder, "model.safetensors.index.json", CHECKSUMS)
    try:
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ExportError(f"{index} is not a safetensors index ({type(exc).__name__}: {exc})") from None
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(_read_file(folder, shard, f"the weight_map of {index}"))
    return state


def _load_weights(model: PreTrainedModel, state: dict[str, torch.Tensor], folder: str) -> None:
    """Assign the checkpoint's tensors, re-tie what the config ties, and check nothing is left."""
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise ExportError(f"{folder}: tensors the model does not have: {result.unexpected_keys[:5]}")
    model.tie_weights()  # keys save_pretrained dropped as duplicates (a tied lm_head)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    left = [name for name, t in tensors if t.is_meta]
    if left:
        raise ExportError(f"{folder}: the checkpoint lacks {left[:5]}; it is incomplete")


def _damaged_folder_is_one_error(load: Callable[..., PreTrainedModel]) -> Callable[..., PreTrainedModel]:
    """Turn whatever a damaged folder makes transformers, safetensors or torch raise into one line.

    A geta error passes through as it is; any other exception while reading the folder (bad
    JSON, a truncated safetensors file, a tensor of another shape) becomes an `ExportError`
    naming the folder and the first line of the cause.
    """
    from geta.errors import GetaError

    @functools.wraps(load)
    def checked(path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> PreTrainedModel:
        try:
            return load(path, *args, **kwargs)
        except GetaError:
            raise
        except Exception as exc:
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
            raise ExportError(
                f"{os.fspath(path)} cannot be loaded as a geta save_pretrained folder "
                f"({type(exc).__name__}: {first[:300]}); write it again with geta.export.pretrained"
            ) from None

    return checked


@_damaged_folder_is_one_error
def load_pretrained(
    path: str | os.PathLike[str],
    model_class: type[PreTrainedModel] | None = None,
    *,
    with_input_quantizers: bool = True,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a folder written by `pretrained`, with its per-layer shapes, in eval mode.

    ``model_class`` defaults to the class named in the config's ``architectures``. With
    ``with_input_quantizers`` the activation quantizers (layer inputs, attention products) are
    attached again (the model then computes exactly what the saved one did); without, layers
    see unquantized inputs. A config that names code of its own (``auto_map``) is refused
    unless ``trust_remote_code`` (that code would run). The safetensors files are checked
    against the folder's `CHECKSUMS` (`geta.IntegrityError` names the tensor that changed) and
    must lie inside the folder.
    """
    hf = import_transformers()
    folder = os.fspath(path)
    info = _read_field(folder)
    try:
        config = hf.AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise ExportError(
            f"{folder}/config.json names custom code (auto_map) that loading would run; pass "
            "trust_remote_code=True only if you trust that folder"
        ) from None
    quantization = getattr(config, "quantization_config", None)
    if is_integer_config(quantization):
        del config.quantization_config  # decoded here: the loaded model holds float weights
    cls = model_class if model_class is not None else _architecture(hf, config, folder)
    model = build_meta(cls, config, info.get("attn_implementation"))
    _resize(model, info.get("shapes", {}))
    _update_sizes(model, info.get("attributes", {}))
    _init_buffers(model, hf)
    _load_weights(model, _read_weights(folder, quantization), folder)
    if with_input_quantizers:
        attach_inputs(model, info.get("input_quantizers", {}))
        attach_products(model, info.get("product_quantizers", {}))
        guard_save_pretrained(model)  # HF's own would write the quantizers' keys
    return model.eval()
