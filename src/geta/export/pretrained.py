"""Hugging Face checkpoints of compressed models: ``save_pretrained`` plus what HF cannot say.

After `geta.convert`, a transformer's layers no longer share one size: layer 0 may keep 33 MLP
units and one kv head while layer 1 keeps 30 units and two. A HF config has one global
``intermediate_size`` / ``num_key_value_heads``, so ``from_pretrained`` would build the wrong
shapes. `pretrained(model, path)` writes an ordinary ``save_pretrained`` folder whose
``config.json`` carries one extra field, ``"geta"``::

    {"format": 1, "version": "0.1.0", "attn_implementation": "eager",
     "shapes": {"model.layers.0.mlp.up_proj.weight": [33, 32], ...},   # differ from the config
     "attributes": {"model.layers.0.mlp.up_proj": {"out_features": 33}, ...},
     "input_quantizers": {"model.layers.0.mlp.up_proj":
                          {"step": 0.01, "qmax": 2.5, "exponent": 1.0, "signed": true, "bits": 8.0}}}

- **weights**: each quantized ``nn.Linear`` weight as its integer codes and step in the
  compressed-tensors format, with a ``quantization_config`` that transformers reads
  (`geta.export.intweights`); other weights as their fake-quantized values W_q = k·step
  (``integer=False``: all of them). A quantized ``lm_head`` tied to an unquantized embedding
  is saved untied (``tie_word_embeddings=False``);
- **shapes** / **attributes**: every tensor shape and integer size attribute (``out_features``,
  ``split_size``, ...) that differs from a model built fresh from the config on ``meta``;
- **input_quantizers** / **product_quantizers**: the layer-input quantizers and those of
  attention's activation products (HF has no way to express them).

Where every decoder layer has the same sizes, they go into the config's own fields
(`geta.export.layersizes`; listed under ``"plain_sizes"``), ``"shapes"`` is empty, and plain
``transformers`` ``from_pretrained`` loads the folder without geta -- computing with float
layer inputs, since HF cannot say activation quantization. ``plain=True`` requires it.

`load_pretrained(path)` reverses it: build the architecture on ``meta``, resize the listed
tensors, update size attributes, load the safetensors (integer codes decoded) with
``assign=True``, and re-attach the input quantizers. The result computes what the saved model computed.

>>> geta.export.pretrained(small, "out/")  # doctest: +SKIP
>>> model = geta.export.load_pretrained("out/")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from geta.export.bake import bake_weights
from geta.export.hffolder import tied_keys, write_folder
from geta.export.hfquantizers import (
    attach_inputs,
    attach_products,
    drop_input_quantizers,
    drop_product_quantizers,
)
from geta.export.info import ExportError
from geta.export.intweights import decode, encode, integer_weights, is_integer_config
from geta.export.layersizes import check_plain_shapes, set_global_sizes
from geta.integrity import member_path, verify_file, write_sidecar
from geta.ops.modules import apply_module_fixers, apply_size_rules
from geta.savehook import guard_save_pretrained

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["CHECKSUMS", "FIELD", "FORMAT_VERSION", "load_pretrained", "pretrained"]

FIELD = "geta"  # the extra key in config.json
FORMAT_VERSION = 1
CHECKSUMS = "geta-checksums.json"  # SHA-256 of each safetensors file and tensor (geta.integrity)


def _transformers() -> ModuleType:
    """Import transformers (an optional dependency) and geta's HF module fixers."""
    try:
        import transformers
    except ImportError as exc:
        raise ExportError("Hugging Face export needs transformers: pip install 'torch-geta[hf]'") from exc
    import geta.ops.hf  # noqa: F401  (registers the specs of Conv1D, GPT-2's attention, ...)

    return transformers


def _require_hf(model: nn.Module) -> ModuleType:
    """transformers, if ``model`` is a ``PreTrainedModel``; otherwise a clear `ExportError`."""
    hf = _transformers() if "transformers" in sys.modules else None
    if hf is None or not isinstance(model, hf.PreTrainedModel):
        raise ExportError(
            f"geta.export.pretrained needs a Hugging Face PreTrainedModel, got {type(model).__name__}; "
            "for other models use torch.save or geta.export.packed"
        )
    return hf


@contextlib.contextmanager
def _quiet(hf: ModuleType) -> Iterator[None]:
    """Silence HF's progress bars for the duration (and restore the user's setting)."""
    logging = hf.utils.logging
    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def _build_meta(cls: type[PreTrainedModel], config: Any, attn: str | None) -> PreTrainedModel:
    """``cls(config)`` with every tensor on the meta device (no memory, no initialisation)."""
    config = copy.deepcopy(config)
    if attn is not None:
        config._attn_implementation = attn  # not saved by HF; eager vs sdpa may flip a rounding
    with torch.device("meta"):
        return cls(config)


def _shape_changes(model: nn.Module, fresh: nn.Module) -> dict[str, list[int]]:
    """state_dict key -> shape, for the tensors whose shape differs from the fresh model's."""
    mine, theirs = model.state_dict(), fresh.state_dict()
    if set(mine) != set(theirs):
        odd = sorted(set(mine) ^ set(theirs))
        raise ExportError(
            f"the model's tensors are not those its config builds (e.g. {odd[:5]}); "
            "geta.export.pretrained only saves models whose structure the HF config describes"
        )
    return {k: list(t.shape) for k, t in mine.items() if t.shape != theirs[k].shape}


def _size_like(value: object) -> bool:
    """An integer size or a tuple of them (``normalized_shape``); bools are not sizes."""
    if isinstance(value, tuple):
        return all(_size_like(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool)


def _attribute_changes(model: nn.Module, fresh: nn.Module) -> dict[str, dict[str, Any]]:
    """Module name -> {attribute: value} for integer size attributes that differ from the fresh model."""
    fresh_modules = dict(fresh.named_modules())
    changes: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        other = fresh_modules.get(name)
        if other is None:
            continue
        for attr, value in vars(module).items():
            before = vars(other).get(attr)
            if attr.startswith("_") or not _size_like(value) or not _size_like(before):
                continue
            if value != before:
                changes.setdefault(name, {})[attr] = list(value) if isinstance(value, tuple) else value
    return changes


def _check_ties(model: nn.Module, fresh: nn.Module) -> None:
    """Every tensor the config ties (one object under two keys) must still be one tensor."""
    mine = model.state_dict(keep_vars=True)
    keys_of: dict[int, list[str]] = {}
    for key, t in fresh.state_dict(keep_vars=True).items():
        keys_of.setdefault(id(t), []).append(key)
    for keys in keys_of.values():
        if len({id(mine[k]) for k in keys}) > 1:
            raise ExportError(
                f"{keys} are tied by the model's config but hold different values after quantization; "
                "HF cannot express that: untie them in the config before prepare, or use geta.export.packed"
            )


def _sizes(model: nn.Module, *, plain: bool) -> dict[str, int]:
    """Write the pruned sizes into the config where every layer has the same (required if ``plain``)."""
    try:
        return set_global_sizes(model)
    except ExportError:
        if plain:
            raise
        return {}  # layers of different sizes: "shapes" records them for load_pretrained


def pretrained(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    plain: bool = False,
    integer: bool = True,
    tokenizer: Any = None,
) -> None:
    """Write ``model`` (a converted HF ``PreTrainedModel``) as a HF folder with the "geta" field.

    ``model`` is not modified. With ``integer`` (the default) each quantized ``nn.Linear``
    weight is stored as its integer codes and step in the compressed-tensors format
    (`geta.export.intweights`), which transformers decodes without geta (with the
    ``compressed-tensors`` package installed); other weights are saved as their fake-quantized
    float values. Input quantizers go into the config (module docstring).

    Where every decoder layer kept the same sizes, they are written into the config's own
    fields (``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``,
    ``head_dim``), so that plain ``transformers`` ``from_pretrained`` loads the folder
    (weights only: activation quantizers still need `load_pretrained`). ``plain=True``
    requires that (``Config(uniform_layers=True)``) and raises `ExportError` otherwise.
    ``tokenizer`` (anything with ``save_pretrained``) is saved alongside. Raises `ExportError`
    for a model that is not a ``PreTrainedModel`` (use ``torch.save`` or `geta.export.packed`).
    """
    hf = _require_hf(model)
    from geta import __version__

    export = copy.deepcopy(model).eval()
    codes = integer_weights(export) if integer else {}
    sizes = _sizes(export, plain=plain)
    if bake_weights(export):
        export.config.tie_word_embeddings = False  # lm_head is quantized, the embedding is not
    products = drop_product_quantizers(export)
    table = drop_input_quantizers(export)
    attn = export.config._attn_implementation
    fresh = _build_meta(type(export), export.config, attn)
    _check_ties(export, fresh)
    shapes, attributes = _shape_changes(export, fresh), _attribute_changes(export, fresh)
    if plain:
        check_plain_shapes(shapes)
    export.config.geta = {  # saved into config.json, and kept by a re-save of the loaded model
        "format": FORMAT_VERSION, "version": __version__, "attn_implementation": attn,
        "shapes": shapes, "attributes": attributes, "plain_sizes": sizes,
        "input_quantizers": table, "product_quantizers": products,
    }  # fmt: skip
    with _quiet(hf):
        if not codes:  # the class's own method: the instance's may be geta's guard (geta.savehook)
            type(export).save_pretrained(export, os.fspath(path))
            if tokenizer is not None:
                tokenizer.save_pretrained(os.fspath(path))
        else:
            state = export.state_dict()
            export.config.quantization_config = encode(state, codes)
            write_folder(export, state, os.fspath(path), tied=tied_keys(fresh), tokenizer=tokenizer)
    _write_checksums(os.fspath(path))


def _write_checksums(folder: str) -> None:
    """`CHECKSUMS` in ``folder``: the SHA-256 of every safetensors file and of each tensor in it."""
    from safetensors.torch import load_file

    names = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors") or n.endswith(".index.json"))
    files = {n: (load_file(os.path.join(folder, n)) if n.endswith(".safetensors") else None) for n in names}
    write_sidecar(folder, CHECKSUMS, files)


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
    hf = _transformers()
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
    model = _build_meta(cls, config, info.get("attn_implementation"))
    _resize(model, info.get("shapes", {}))
    _update_sizes(model, info.get("attributes", {}))
    _init_buffers(model, hf)
    _load_weights(model, _read_weights(folder, quantization), folder)
    if with_input_quantizers:
        attach_inputs(model, info.get("input_quantizers", {}))
        attach_products(model, info.get("product_quantizers", {}))
        guard_save_pretrained(model)  # HF's own would write the quantizers' keys
    return model.eval()
