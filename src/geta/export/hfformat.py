"""What a geta Hugging Face folder is, for both its writer and its loader.

The folder's ``config.json`` carries the extra field `FIELD` (format `FORMAT_VERSION`,
described in `geta.export.pretrained`), and `CHECKSUMS` holds the SHA-256 of every safetensors
file and tensor (`geta.integrity`). Writer and loader both build the architecture from a config
on the ``meta`` device (`build_meta`): the writer to find what differs from a fresh model, the
loader as the skeleton it resizes and fills. transformers is an optional dependency, imported
only when called for (`import_transformers`).
"""

from __future__ import annotations

import copy
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from geta.export.info import ExportError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["CHECKSUMS", "FIELD", "FORMAT_VERSION", "build_meta", "import_transformers"]

FIELD = "geta"  # the extra key in config.json
FORMAT_VERSION = 1
CHECKSUMS = "geta-checksums.json"  # SHA-256 of each safetensors file and tensor (geta.integrity)


def import_transformers() -> ModuleType:
    """Import transformers (an optional dependency) and geta's HF module fixers."""
    try:
        import transformers
    except ImportError as exc:
        raise ExportError("Hugging Face export needs transformers: pip install 'torch-geta[hf]'") from exc
    import geta.ops.hf  # noqa: F401  (registers the specs of Conv1D, GPT-2's attention, ...)

    return transformers


def build_meta(cls: type[PreTrainedModel], config: Any, attn: str | None) -> PreTrainedModel:
    """``cls(config)`` with every tensor on the meta device (no memory, no initialisation)."""
    config = copy.deepcopy(config)
    if attn is not None:
        config._attn_implementation = attn  # not saved by HF; eager vs sdpa may flip a rounding
    with torch.device("meta"):
        return cls(config)
