"""Local Hugging Face checkpoints (``--model hf:DIR``): the model class from the config, the tokenizer.

A checkpoint directory is what ``save_pretrained`` writes: ``config.json``, the weights and,
for text models, the tokenizer files (``tokenizer.save_pretrained(DIR)``). Nothing is
downloaded: every load passes ``local_files_only=True``, and no code of the folder runs
(``trust_remote_code=False``: a config whose ``auto_map`` names its own code is refused).

`open_checkpoint` reads the config and picks the kind of model from its ``architectures``
entry, through transformers' own Auto mappings:

- `HFKind.CAUSAL_LM` (``AutoModelForCausalLM``: Llama, Qwen2, GPT-2, ...): trained on text or
  JSONL packed into blocks of tokens, next-token prediction;
- `HFKind.SEQUENCE_CLASSIFICATION` (``AutoModelForSequenceClassification``): labelled JSONL
  records, one padded row of tokens each;
- `HFKind.IMAGE_CLASSIFICATION` (``AutoModelForImageClassification``): the image data sets,
  whose images must have the size and channels of the config.

`build_checkpoint_model` loads the weights (float32) and wraps the model so that
``forward(x)`` returns the logits, like every built-in recipe; a classification head whose
class count differs from the data's is initialised anew. `export_form` undoes the wrapping for
deployment: the Hugging Face model itself with the keyword inputs its users pass
(``input_ids`` and ``attention_mask``, or ``pixel_values``), returning ``logits``.
transformers is imported only here, and only when a checkpoint is opened.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geta.recipes.bundle import DataBundle, Task
from geta.recipes.errors import RecipeError
from geta.recipes.tokens import Encoder, tokenizer_encoder

__all__ = [
    "HFKind",
    "Checkpoint",
    "CausalLM",
    "SequenceClassifier",
    "ImageClassifier",
    "open_checkpoint",
    "build_checkpoint_model",
    "export_form",
]

PREFIX = "hf:"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


class HFKind(enum.Enum):
    """The head of a checkpoint, i.e. which Auto class loads it."""

    CAUSAL_LM = "causal-lm"
    SEQUENCE_CLASSIFICATION = "sequence-classification"
    IMAGE_CLASSIFICATION = "image-classification"

    @property
    def task(self) -> Task:
        return Task.LM if self is HFKind.CAUSAL_LM else Task.CLASSIFY


def _auto_classes() -> dict[HFKind, tuple[Any, dict[str, Any]]]:
    """Per kind: the Auto class and its mapping ``model_type -> class name(s)``."""
    import transformers
    from transformers.models.auto import modeling_auto as auto

    return {
        HFKind.CAUSAL_LM: (transformers.AutoModelForCausalLM, auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
        HFKind.SEQUENCE_CLASSIFICATION: (
            transformers.AutoModelForSequenceClassification,
            auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        ),
        HFKind.IMAGE_CLASSIFICATION: (
            transformers.AutoModelForImageClassification,
            auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        ),
    }


def _names(mapping: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for value in mapping.values():
        out.update(value if isinstance(value, (tuple, list)) else (value,))
    return out


class CausalLM(nn.Module):
    """Wraps a Hugging Face causal LM so that ``forward(input_ids)`` returns the logits (B, T, V)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids).logits


class SequenceClassifier(nn.Module):
    """``forward(input_ids)`` -> class logits (B, classes); positions holding ``pad_id`` are masked."""

    def __init__(self, model: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.model = model
        self.pad_id = pad_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids.ne(self.pad_id).long()  # (B, T): 1 on real tokens
        return self.model(input_ids=input_ids, attention_mask=mask).logits


class ImageClassifier(nn.Module):
    """``forward(pixel_values)`` -> class logits (B, classes)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


@dataclass(frozen=True)
class Checkpoint:
    """An opened checkpoint directory: its config, its kind and the architecture named in it."""

    directory: Path
    config: Any  # transformers.PretrainedConfig
    kind: HFKind
    architecture: str

    @property
    def task(self) -> Task:
        return self.kind.task

    def tokenizer(self) -> Any:
        """The tokenizer saved in the directory (``AutoTokenizer``, local files only)."""
        if not any((self.directory / name).is_file() for name in _TOKENIZER_FILES):
            raise RecipeError(
                f"checkpoint {self.directory} has no tokenizer ({', '.join(_TOKENIZER_FILES)}); save one "
                "there with tokenizer.save_pretrained(DIR)"
            )
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(
                str(self.directory), local_files_only=True, trust_remote_code=False
            )
        except Exception as exc:
            raise RecipeError(
                f"the tokenizer in {self.directory} could not be loaded ({type(exc).__name__}: "
                f"{_first_line(exc)}); save it again with tokenizer.save_pretrained(DIR)"
            ) from None

    def encoder(self) -> Encoder:
        """The tokenizer as the `geta.recipes.tokens.Encoder` of the text data sets."""
        return tokenizer_encoder(self.tokenizer())

    def max_positions(self) -> int | None:
        """Longest sequence the config allows (``max_position_embeddings`` / ``n_positions``)."""
        for key in ("max_position_embeddings", "n_positions"):
            value = getattr(self.config, key, None)
            if isinstance(value, int):
                return value
        return None


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers' "Loading weights" bars off while a checkpoint loads (restored after)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def open_checkpoint(directory: str) -> Checkpoint:
    """Read ``DIR/config.json`` and choose the model kind; errors name the directory and the fix."""
    root = Path(directory).expanduser()
    if not directory or not root.is_dir():
        raise RecipeError(
            f"checkpoint directory {root} does not exist; pass --model hf:DIR with a folder written by "
            "save_pretrained"
        )
    if not (root / "config.json").is_file():
        raise RecipeError(
            f"checkpoint directory {root} has no config.json; pass a folder written by model.save_pretrained"
        )
    try:
        from transformers import AutoConfig
    except ImportError:
        raise RecipeError("--model hf:DIR needs transformers: pip install 'torch-geta[hf]'") from None
    try:
        config = AutoConfig.from_pretrained(str(root), local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise RecipeError(
            f"{root / 'config.json'} could not be read ({type(exc).__name__}: {_first_line(exc)}); "
            "check that it was written by save_pretrained with this transformers version"
        ) from None
    archs = list(getattr(config, "architectures", None) or [])
    for kind, (_, mapping) in _auto_classes().items():
        found = next((a for a in archs if a in _names(mapping)), None)
        if found is not None:
            return Checkpoint(root, config, kind, found)
    named = ", ".join(archs) if archs else "none"
    raise RecipeError(
        f"checkpoint {root}: architecture {named} is not a causal LM, sequence classifier or image "
        "classifier (the model kinds geta compress trains); pass such a checkpoint, or --model module:factory"
    )


def _check_data(ckpt: Checkpoint, data: DataBundle) -> None:
    """The data fits the checkpoint: task, sequence length, vocabulary, image shape."""
    if data.task is not ckpt.task:
        want = {
            HFKind.CAUSAL_LM: "text to model (--data text:FILE|DIR or jsonl:FILE[:FIELD])",
            HFKind.SEQUENCE_CLASSIFICATION: "labelled JSONL (--data jsonl:FILE[:FIELD], a label per record)",
            HFKind.IMAGE_CLASSIFICATION: "an image data set (digits, cifar10:DIR, imagefolder:DIR)",
        }[ckpt.kind]
        raise RecipeError(
            f"checkpoint {ckpt.directory} ({ckpt.architecture}) needs {want}; got {data.name!r}"
        )
    if ckpt.kind is HFKind.IMAGE_CLASSIFICATION:
        size, channels = getattr(ckpt.config, "image_size", None), getattr(ckpt.config, "num_channels", None)
        want_shape = (channels, size, size) if isinstance(size, int) else None
        if want_shape is not None and data.input_shape != want_shape:
            raise RecipeError(
                f"checkpoint {ckpt.directory} takes images of {want_shape}, data set {data.name!r} has "
                f"{data.input_shape}; pass data of that shape or a checkpoint made for it"
            )
        return
    longest = ckpt.max_positions()
    if longest is not None and data.input_shape[0] > longest:
        raise RecipeError(
            f"checkpoint {ckpt.directory} handles {longest} positions, the data's blocks hold "
            f"{data.input_shape[0]}; pass --seq-len {longest} or less"
        )
    vocab = int(getattr(ckpt.config, "vocab_size", 0) or 0)
    top = int(max(data.x_train.max(), data.x_test.max()))
    if vocab and top >= vocab:
        raise RecipeError(
            f"the data holds token id {top}, but checkpoint {ckpt.directory} has a vocabulary of {vocab}; "
            "use the tokenizer saved with the checkpoint"
        )


def build_checkpoint_model(ckpt: Checkpoint, data: DataBundle, *, pad_id: int = 0) -> nn.Module:
    """Load the checkpoint's weights (float32) into its Auto class and wrap it to return logits.

    ``pad_id`` is the padding token of sequence-classification rows (masked out).
    """
    _check_data(ckpt, data)
    auto, _ = _auto_classes()[ckpt.kind]
    extra: dict[str, Any] = {}
    if ckpt.task is Task.CLASSIFY and getattr(ckpt.config, "num_labels", None) != data.num_classes:
        extra = {"num_labels": data.num_classes, "ignore_mismatched_sizes": True}  # a new head
    if ckpt.kind is HFKind.SEQUENCE_CLASSIFICATION and getattr(ckpt.config, "pad_token_id", None) is None:
        extra["pad_token_id"] = pad_id  # the head reads the last non-pad token
    try:
        with _no_progress_bars():
            model = auto.from_pretrained(
                str(ckpt.directory),
                local_files_only=True,
                trust_remote_code=False,
                dtype=torch.float32,
                **extra,
            )
    except Exception as exc:
        raise RecipeError(
            f"the weights of {ckpt.directory} could not be loaded "
            f"({type(exc).__name__}: {_first_line(exc)}); save the model again with save_pretrained"
        ) from None
    if ckpt.kind is HFKind.CAUSAL_LM:
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False  # training: no key/value cache in the outputs
        return CausalLM(model)
    if ckpt.kind is HFKind.SEQUENCE_CLASSIFICATION:
        return SequenceClassifier(model, pad_id)
    return ImageClassifier(model)


def export_form(model: nn.Module, example: tuple[torch.Tensor, ...]) -> tuple[nn.Module, object]:
    """(module, example inputs) to export for deployment (ONNX): for one of the wrappers above,
    the Hugging Face model inside it with the keyword inputs of its own ``forward``, so that
    the file takes ``input_ids`` + ``attention_mask`` (or ``pixel_values``) and returns
    ``logits``; any other model and ``example`` unchanged.

    ``example`` is the wrapper's positional input (``(input_ids,)`` or ``(pixel_values,)``);
    the attention mask marks every token (a causal LM) or the non-padding ones (a classifier,
    as its ``forward`` does).
    """
    if isinstance(model, CausalLM):
        (ids,) = example
        return model.lm, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if isinstance(model, SequenceClassifier):
        (ids,) = example
        return model.model, {"input_ids": ids, "attention_mask": ids.ne(model.pad_id).long()}
    if isinstance(model, ImageClassifier):
        (pixels,) = example
        return model.model, {"pixel_values": pixels}
    return model, example
