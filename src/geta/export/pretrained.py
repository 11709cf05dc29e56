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

`load_pretrained(path)` (`geta.export.hfloader`) reverses it: build the architecture on
``meta``, resize the listed tensors, update size attributes, load the safetensors (integer
codes decoded) with ``assign=True``, and re-attach the input quantizers. The result computes
what the saved model computed.

>>> geta.export.pretrained(small, "out/")  # doctest: +SKIP
>>> model = geta.export.load_pretrained("out/")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from torch import nn

from geta.export.bake import bake_weights
from geta.export.hffolder import tied_keys, write_folder
from geta.export.hfformat import CHECKSUMS, FIELD, FORMAT_VERSION, build_meta, import_transformers
from geta.export.hfloader import load_pretrained
from geta.export.hfquantizers import drop_input_quantizers, drop_product_quantizers
from geta.export.info import ExportError
from geta.export.intweights import encode, integer_weights
from geta.export.layersizes import check_plain_shapes, set_global_sizes
from geta.integrity import write_sidecar

__all__ = ["CHECKSUMS", "FIELD", "FORMAT_VERSION", "load_pretrained", "pretrained"]


def _require_hf(model: nn.Module) -> ModuleType:
    """transformers, if ``model`` is a ``PreTrainedModel``; otherwise a clear `ExportError`."""
    hf = import_transformers() if "transformers" in sys.modules else None
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
    fresh = build_meta(type(export), export.config, attn)
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
