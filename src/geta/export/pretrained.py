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

- **weights** are saved as the fake-quantized values the model computes with, W_q = k·step
  (parametrizations baked in, as ``leave_parametrized=True`` would). A quantized ``lm_head``
  tied to an unquantized embedding is saved untied (``tie_word_embeddings=False``);
- **shapes** / **attributes**: every tensor shape and integer size attribute (``out_features``,
  ``split_size``, ...) that differs from a model built fresh from the config on ``meta``;
- **input_quantizers** / **product_quantizers**: the layer-input quantizers and those of
  attention's activation products (HF has no way to express them).

With ``plain=True`` (for a model pruned alike in every layer, ``Config(uniform_layers=True)``)
the pruned sizes go into the config's own fields instead (`geta.export.layersizes`; listed under
``"plain_sizes"``), ``"shapes"`` is empty, and plain ``transformers`` ``from_pretrained`` loads
the folder without geta -- computing with float layer inputs, since HF cannot say activation
quantization.

`load_pretrained(path)` reverses it: build the architecture on ``meta``, resize the listed
tensors, update size attributes, load the safetensors with ``assign=True``, and re-attach the
input quantizers. The result computes what the saved model computed.

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
from geta.export.info import ExportError
from geta.export.layersizes import check_plain_shapes, set_global_sizes
from geta.ops.modules import apply_module_fixers
from geta.quant.attach import INPUT_QUANTIZER_ATTR, attach_input_quantizer, input_quantizer
from geta.quant.products import detach_product_quantizers, restore_product_quantizers
from geta.quant.quantizer import LearnableQuantizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["FIELD", "FORMAT_VERSION", "load_pretrained", "pretrained"]

FIELD = "geta"  # the extra key in config.json
FORMAT_VERSION = 1


def _transformers() -> ModuleType:
    """Import transformers (an optional dependency) and geta's HF module fixers."""
    try:
        import transformers
    except ImportError as exc:
        raise ExportError("Hugging Face export needs transformers: pip install 'torch-geta[hf]'") from exc
    import geta.ops.hf  # noqa: F401  (registers GPT-2's attention fixer)

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


def _quantizer_entry(q: LearnableQuantizer) -> dict[str, Any]:
    """The JSON form of an input quantizer (float32 scalars survive a JSON double exactly)."""
    return {
        "step": float(q.step.detach()), "qmax": float(q.qmax.detach()),
        "exponent": float(q.exponent.detach()), "signed": q.signed, "bits": q.bit_width,
    }  # fmt: skip


def _drop_input_quantizers(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Remove every layer-input quantizer (its pre-hook then passes inputs through); their table."""
    table: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        q = input_quantizer(module)
        if q is not None:
            table[name] = _quantizer_entry(q)
            delattr(module, INPUT_QUANTIZER_ATTR)
    left = [n for n, m in model.named_modules() if isinstance(m, LearnableQuantizer)]
    if left:
        raise ExportError(
            f"quantizers not attached by geta (not a weight parametrization or a layer input): {left}; "
            "attach them with geta.quant.attach so that export can convert them"
        )
    return table


def _drop_product_quantizers(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Remove every activation-product quantizer (attention's q·kᵀ, p·v); their table by module.

    Each entry holds the holder's layout (`geta.quant.products`) and the scalars of each
    quantized operand slot, keyed ``"<call>.<position>"``.
    """
    table: dict[str, dict[str, Any]] = {}
    for name, module in list(model.named_modules()):
        holder = detach_product_quantizers(module)
        if holder is not None:
            scalars = {
                f"{call}.{position}": _quantizer_entry(q)
                for call, position, _, q in holder.slots()
                if isinstance(q, LearnableQuantizer)
            }
            table[name] = {"layout": holder.layout(), "quantizers": scalars}
    return table


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


def pretrained(model: nn.Module, path: str | os.PathLike[str], *, plain: bool = False) -> None:
    """Write ``model`` (a converted HF ``PreTrainedModel``) with ``save_pretrained`` + the "geta" field.

    ``model`` is not modified. Weights are saved as their fake-quantized values; input
    quantizers go into the config (module docstring). With ``plain`` the pruned sizes are
    written into the config's own fields (``intermediate_size``, ``num_attention_heads``,
    ``num_key_value_heads``, ``head_dim``) so that plain ``transformers`` ``from_pretrained``
    loads the folder without geta (weights only: activation quantizers still need
    `load_pretrained`); every decoder layer must then have the same sizes
    (``Config(uniform_layers=True)``), else `ExportError`. Raises `ExportError` for a model
    that is not a ``PreTrainedModel`` (use ``torch.save`` or `geta.export.packed`).
    """
    hf = _require_hf(model)
    from geta import __version__

    export = copy.deepcopy(model).eval()
    sizes = set_global_sizes(export) if plain else {}
    if bake_weights(export):
        export.config.tie_word_embeddings = False  # lm_head is quantized, the embedding is not
    products = _drop_product_quantizers(export)
    table = _drop_input_quantizers(export)
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
        export.save_pretrained(os.fspath(path))


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


def _size_rules() -> dict[type, Callable[[nn.Module], None]]:
    """Module type -> how it reads its size attributes back from its weight's shape."""
    from transformers.pytorch_utils import Conv1D

    def linear(m: nn.Module) -> None:
        m.out_features, m.in_features = m.weight.shape  # weight (out, in)

    def embedding(m: nn.Module) -> None:
        m.num_embeddings, m.embedding_dim = m.weight.shape  # weight (vocab, dim)

    def layer_norm(m: nn.Module) -> None:
        if m.weight is not None:
            m.normalized_shape = tuple(m.weight.shape)  # weight (*normalized_shape)

    def conv1d(m: nn.Module) -> None:
        m.nx, m.nf = m.weight.shape  # HF's transposed linear: weight (in, out)

    return {nn.Linear: linear, nn.Embedding: embedding, nn.LayerNorm: layer_norm, Conv1D: conv1d}


def _update_sizes(model: nn.Module, attributes: dict[str, dict[str, Any]]) -> None:
    """Size attributes from the weights' shapes, then the recorded ones, then geta's fixers."""
    rules = _size_rules()
    for module in model.modules():
        for cls, rule in rules.items():
            if isinstance(module, cls):
                rule(module)
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


def _read_weights(folder: str) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors``, or of every shard listed by its index."""
    from safetensors.torch import load_file

    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(single):
        return load_file(single)
    index = os.path.join(folder, "model.safetensors.index.json")
    if not os.path.exists(index):
        raise ExportError(f"{folder} has no model.safetensors; write it with geta.export.pretrained")
    with open(index, encoding="utf-8") as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(os.path.join(folder, shard)))
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


def _attach_inputs(model: nn.Module, table: dict[str, dict[str, Any]]) -> None:
    """Re-attach the recorded input quantizers with their exact scalars."""
    for name, entry in table.items():
        q = LearnableQuantizer(signed=bool(entry["signed"]))
        with torch.no_grad():
            for scalar in ("step", "qmax", "exponent"):
                getattr(q, scalar).fill_(float(entry[scalar]))
        attach_input_quantizer(model.get_submodule(name), q)


def _attach_products(model: nn.Module, table: dict[str, dict[str, Any]]) -> None:
    """Re-attach the recorded product quantizers with their exact scalars."""
    for name, entry in table.items():
        holder = restore_product_quantizers(model.get_submodule(name), entry["layout"])
        for call, position, _, q in holder.slots():
            saved = entry["quantizers"].get(f"{call}.{position}")
            if isinstance(q, LearnableQuantizer) and saved is not None:
                with torch.no_grad():
                    for scalar in ("step", "qmax", "exponent"):
                        getattr(q, scalar).fill_(float(saved[scalar]))


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
) -> PreTrainedModel:
    """Load a folder written by `pretrained`, with its per-layer shapes, in eval mode.

    ``model_class`` defaults to the class named in the config's ``architectures``. With
    ``with_input_quantizers`` the activation quantizers (layer inputs, attention products) are
    attached again (the model then computes exactly what the saved one did); without, layers
    see unquantized inputs.
    """
    hf = _transformers()
    folder = os.fspath(path)
    info = _read_field(folder)
    config = hf.AutoConfig.from_pretrained(folder)
    cls = model_class if model_class is not None else _architecture(hf, config, folder)
    model = _build_meta(cls, config, info.get("attn_implementation"))
    _resize(model, info.get("shapes", {}))
    _update_sizes(model, info.get("attributes", {}))
    _init_buffers(model, hf)
    _load_weights(model, _read_weights(folder), folder)
    if with_input_quantizers:
        _attach_inputs(model, info.get("input_quantizers", {}))
        _attach_products(model, info.get("product_quantizers", {}))
    return model.eval()
