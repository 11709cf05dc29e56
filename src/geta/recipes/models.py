"""Built-in model recipes for the CLI, and loading a user's ``module:factory``.

Recipes are tiny and randomly initialised; each one adapts to the data set (input channels,
classes, vocabulary):

- ``resnet`` (default): a residual CNN, a stem and three basic blocks (32/48/64 channels);
- ``vgg``: conv-bn-relu stacks with max-pooling and a two-layer classifier over a 2x2 map;
- ``mlp``: three linear layers over the flattened image;
- ``vit``: a small vision transformer (patch embedding, two pre-norm encoder layers, 4 heads);
- ``llama``: a small Llama-style causal language model (transformers' ``LlamaForCausalLM``,
  grouped-query attention) for byte-level text.

Besides the recipes: ``hf:DIR``, a local Hugging Face checkpoint (`geta.recipes.hf`), and a
user's ``module:factory``. Each recipe carries its `TrainingDefaults` (`defaults_for`).

>>> from geta.recipes.data import load_data
>>> model = build_model("mlp", load_data("digits"))
>>> type(model).__name__, model(torch.zeros(2, 1, 8, 8)).shape[-1]
('Sequential', 10)
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from geta.recipes import hf
from geta.recipes.data import DataBundle, Task, load_data
from geta.recipes.defaults import CNN_DEFAULTS, HF_DEFAULTS, TRANSFORMER_DEFAULTS, TrainingDefaults
from geta.recipes.errors import RecipeError
from geta.recipes.hf import CausalLM

__all__ = ["RECIPES", "Recipe", "CausalLM", "build_model", "defaults_for", "load_factory", "load_run_data"]


@dataclass(frozen=True)
class Recipe:
    """A built-in model: what it is, which task it solves, and how to build it for a data set."""

    name: str
    description: str
    task: Task
    build: Callable[[DataBundle], nn.Module]
    needs: str | None = None  # an optional import, e.g. "transformers"
    defaults: TrainingDefaults = CNN_DEFAULTS  # how `geta compress` trains it unless told otherwise


def _cbr(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class BasicBlock(nn.Module):
    """Two 3x3 conv-bn layers and a shortcut (a 1x1 conv-bn when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_cbr(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        )
        same = stride == 1 and cin == cout
        down = [nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)]
        self.shortcut = nn.Identity() if same else nn.Sequential(*down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))  # (B, cout, H/stride, W/stride)


def resnet(data: DataBundle, widths: tuple[int, int, int] = (32, 48, 64)) -> nn.Module:
    """A residual CNN: a stem, then basic blocks of ``widths`` channels (strides 1, 2, 2).

    The widths grow slowly (not 16/32/64) so that the first, most expensive stage has channels
    to spare: pruning then removes MACs where they are, not only parameters in the last stage.
    """
    c = data.input_shape[0]
    w1, w2, w3 = widths
    return nn.Sequential(
        *_cbr(c, w1), BasicBlock(w1, w1, 1), BasicBlock(w1, w2, 2), BasicBlock(w2, w3, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w3, data.num_classes),
    )  # fmt: skip


def vgg(data: DataBundle, width: int = 16) -> nn.Module:
    """VGG-style: two conv pairs with max-pooling, a 2x2 map flattened into a 2-layer classifier."""
    c, w = data.input_shape[0], width
    return nn.Sequential(
        *_cbr(c, w), *_cbr(w, w), nn.MaxPool2d(2), *_cbr(w, 2 * w), *_cbr(2 * w, 2 * w), nn.MaxPool2d(2),
        *_cbr(2 * w, 4 * w), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(4 * w * 4, 64), nn.ReLU(), nn.Linear(64, data.num_classes),
    )  # fmt: skip


def mlp(data: DataBundle) -> nn.Module:
    """Three linear layers (256, 128 hidden units) over the flattened input."""
    features = 1
    for s in data.input_shape:
        features *= s
    return nn.Sequential(
        nn.Flatten(), nn.Linear(features, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
        nn.Linear(128, data.num_classes),
    )  # fmt: skip


class ViT(nn.Module):
    """A small vision transformer: patches -> two pre-norm encoder layers -> mean pool -> head."""

    def __init__(self, channels: int, size: int, classes: int, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        patch = 2 if size <= 16 else 4
        tokens = (size // patch) ** 2
        self.patch = nn.Conv2d(channels, dim, patch, patch)  # (B, dim, H/p, W/p)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2) + self.pos  # (B, tokens, dim)
        return self.head(self.norm(self.encoder(h)).mean(1))  # (B, classes)


def vit(data: DataBundle) -> nn.Module:
    c, h, w = data.input_shape
    if h != w:
        raise RecipeError(f"recipe 'vit' needs square images, got {h}x{w}")
    return ViT(c, h, data.num_classes)


def llama(data: DataBundle) -> nn.Module:
    """A 2-layer Llama (hidden 64, 4 query heads over 2 key/value heads), random init."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=data.num_classes, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=data.input_shape[0],
        use_cache=False, tie_word_embeddings=False, attn_implementation="sdpa",
    )  # fmt: skip
    return CausalLM(LlamaForCausalLM(cfg))


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("resnet", "residual CNN (32/48/64 channels)", Task.CLASSIFY, resnet),
        Recipe("vgg", "VGG-style CNN with a 2-layer classifier", Task.CLASSIFY, vgg),
        Recipe("mlp", "3-layer perceptron over flattened inputs", Task.CLASSIFY, mlp),
        Recipe(
            "vit",
            "small vision transformer (2 layers, 4 heads)",
            Task.CLASSIFY,
            vit,
            defaults=TRANSFORMER_DEFAULTS,
        ),
        Recipe(
            "llama",
            "small Llama-style causal LM (needs transformers)",
            Task.LM,
            llama,
            "transformers",
            TRANSFORMER_DEFAULTS,
        ),
    )
}
"""Every built-in recipe by name."""


def defaults_for(spec: str) -> TrainingDefaults:
    """The training defaults of model ``spec``: its recipe's, `HF_DEFAULTS` for ``hf:DIR``, else CNN's.

    >>> defaults_for("llama").optimizer, defaults_for("hf:ckpt").optimizer, defaults_for("my:net").optimizer
    ('adamw', 'adamw', 'sgd')
    """
    if spec.startswith(hf.PREFIX):
        return HF_DEFAULTS
    recipe = RECIPES.get(spec)
    return recipe.defaults if recipe is not None else CNN_DEFAULTS


def load_run_data(model: str, data: str, *, seed: int = 0, seq_len: int | None = None) -> DataBundle:
    """The data set ``data`` as model ``model`` reads it.

    With ``hf:DIR`` text is tokenized by the checkpoint's tokenizer, and labelled when the
    checkpoint is a sequence classifier; with every other model it is byte-level.
    """
    if not model.startswith(hf.PREFIX):
        return load_data(data, seed=seed, seq_len=seq_len)
    ckpt = hf.open_checkpoint(model[len(hf.PREFIX) :])
    text = data.partition(":")[0].strip().lower() in ("text", "jsonl")
    encoder = ckpt.encoder() if text else None
    return load_data(data, seed=seed, encoder=encoder, seq_len=seq_len, task=ckpt.task)


def build_model(spec: str, data: DataBundle, *, seed: int = 0) -> nn.Module:
    """Build recipe ``spec``, a checkpoint ``hf:DIR`` or a user's ``module:factory`` for ``data``.

    Seeded, in train mode. A checkpoint's weights are loaded (see `geta.recipes.hf`); its
    sequence-classification rows are padded with its tokenizer's pad token.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.startswith(hf.PREFIX):
            model = _build_checkpoint(spec[len(hf.PREFIX) :], data)
        elif ":" in spec:
            model = load_factory(spec, data)
        else:
            model = _build_recipe(spec, data)
    return model.train()


def _build_checkpoint(directory: str, data: DataBundle) -> nn.Module:
    ckpt = hf.open_checkpoint(directory)
    pad = ckpt.encoder().pad if ckpt.kind is hf.HFKind.SEQUENCE_CLASSIFICATION else 0
    return hf.build_checkpoint_model(ckpt, data, pad_id=pad)


def _build_recipe(name: str, data: DataBundle) -> nn.Module:
    recipe = RECIPES.get(name)
    if recipe is None:
        raise RecipeError(
            f"unknown model {name!r}; use one of {', '.join(RECIPES)}, hf:DIR (a Hugging Face "
            "checkpoint folder) or module:factory (a function of your own that returns an nn.Module)"
        )
    if recipe.task is not data.task:
        want = (
            "an image data set (digits, cifar10:DIR, imagefolder:DIR)"
            if recipe.task is Task.CLASSIFY
            else "a text data set (--data text, text:FILE|DIR or jsonl:FILE[:FIELD])"
        )
        raise RecipeError(f"model {name!r} needs {want}; got {data.name!r}")
    if recipe.needs and importlib.util.find_spec(recipe.needs) is None:
        raise RecipeError(f"model {name!r} needs {recipe.needs}: pip install 'torch-geta[hf]'")
    return recipe.build(data)


def _factory_kwargs(factory: Callable[..., object], data: DataBundle) -> dict[str, object]:
    """The data facts a factory asks for by parameter name."""
    facts: dict[str, object] = {
        "num_classes": data.num_classes, "vocab_size": data.num_classes,
        "in_channels": data.input_shape[0], "input_shape": data.input_shape,
    }  # fmt: skip
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in facts.items() if k in params}


def load_factory(spec: str, data: DataBundle) -> nn.Module:
    """Import ``module:factory`` (the current directory is importable, last) and call the factory.

    The factory may take any of ``num_classes``, ``vocab_size``, ``in_channels`` and
    ``input_shape`` as keyword parameters; it must return an ``nn.Module``.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise RecipeError(f"model {spec!r} is not of the form module:factory, e.g. mymodels:build_net")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # last: a file in the current directory never shadows an installed module
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise RecipeError(
            f"model {spec!r}: module {module_name!r} could not be imported "
            f"({type(exc).__name__}: {exc}); check the name and that it is on PYTHONPATH"
        ) from None
    finally:
        if added:
            sys.path.remove(cwd)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise RecipeError(
            f"model {spec!r}: module {module_name!r} has no callable {attr!r}; "
            "name a function that returns an nn.Module"
        )
    try:
        model = factory(**_factory_kwargs(factory, data))
    except Exception as exc:
        raise RecipeError(f"model {spec!r}: the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise RecipeError(f"model {spec!r}: the factory returned {type(model).__name__}, not an nn.Module")
    return model
