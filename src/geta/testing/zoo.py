"""A zoo of tiny, structurally faithful models for testing geta (and your own extensions).

Every entry builds a model in eval mode plus example inputs (batch 2) in well under 100k
parameters, yet each one carries a structure that a dependency analysis must get right:
residual adds, channel gates, concatenation, channel splits, depthwise and grouped convs,
channel shuffles, transposed convs, flatten into a linear layer, norms, attention heads, and
ops geta does not understand. Tests cross this table with every mode instead of copying
per-model scripts.

>>> from geta.testing import zoo
>>> model, inputs = zoo.build("resnet")
>>> tuple(model(*inputs).shape)
(2, 10)
>>> "resnet" in zoo.names(tags={"residual"})
True

Hugging Face entries (tag ``"hf"``, ``needs="transformers"``) live in `geta.testing.zoo_hf`;
transformers is imported only when one of them is built.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from geta.testing import zoo_hf

__all__ = ["ZOO", "Inputs", "ZooEntry", "build", "names", "register"]

Inputs = tuple[torch.Tensor, ...] | dict[str, torch.Tensor]
"""Example inputs: positional (``model(*inputs)``) or keyword (``model(**inputs)``)."""


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo: a factory and the structural features it exercises."""

    name: str
    factory: Callable[[], tuple[nn.Module, Inputs]]  # -> (model in eval mode, example inputs)
    tags: frozenset[str]
    needs: str | None = None  # an optional import the factory requires, e.g. "transformers"

    @property
    def available(self) -> bool:
        """True when the optional dependency named by ``needs`` (if any) is installed."""
        return self.needs is None or importlib.util.find_spec(self.needs) is not None


ZOO: dict[str, ZooEntry] = {}
"""Every registered entry by name (insertion order is the listing order)."""


def register(entry: ZooEntry) -> ZooEntry:
    """Add ``entry`` to `ZOO`; a duplicate name raises ``ValueError``."""
    if entry.name in ZOO:
        raise ValueError(f"zoo entry {entry.name!r} is already registered; pick another name")
    ZOO[entry.name] = entry
    return entry


def names(tags: Iterable[str] | None = None, *, exclude: Iterable[str] = ()) -> list[str]:
    """Entry names having *all* of ``tags`` and *none* of ``exclude`` (e.g. ``exclude={"hf"}``)."""
    want, drop = frozenset(tags or ()), frozenset(exclude)
    return [n for n, e in ZOO.items() if want <= e.tags and not (drop & e.tags)]


def build(name: str, seed: int = 0) -> tuple[nn.Module, Inputs]:
    """Build entry ``name`` deterministically: same seed, same weights and inputs.

    The global RNG is seeded inside `torch.random.fork_rng`, so the caller's random state is
    left untouched. Raises ``KeyError`` for an unknown name and ``ImportError`` (with the pip
    command) when the entry's optional dependency is missing.
    """
    if name not in ZOO:
        raise KeyError(f"unknown zoo entry {name!r}; known: {', '.join(ZOO)}")
    entry = ZOO[name]
    if not entry.available:
        raise ImportError(f"zoo entry {name!r} needs {entry.needs!r}: pip install 'torch-geta[hf]'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, inputs = entry.factory()
    return model.eval(), inputs


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """conv-bn-relu, 'same' padding."""
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout), nn.ReLU()]


def _head(cin: int, classes: int = 10) -> list[nn.Module]:
    """Global average pool + flatten + linear classifier."""
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]


def _img(c: int = 3, hw: int = 8) -> tuple[torch.Tensor]:
    return (torch.randn(2, c, hw, hw),)  # (B, C, H, W)


def _tokens() -> tuple[torch.Tensor]:
    return (torch.randn(2, 6, 16),)  # (B, T, features)


def _plain_cnn() -> tuple[nn.Module, Inputs]:
    return nn.Sequential(*_cbr(3, 8), *_cbr(8, 16), *_cbr(16, 16), *_head(16)), _img()


def _vgg() -> tuple[nn.Module, Inputs]:
    # 8x8 -> pool -> 4x4 -> pool -> (16, 2, 2) flattened: each channel owns 4 linear inputs.
    model = nn.Sequential(
        *_cbr(3, 8), *_cbr(8, 8), nn.MaxPool2d(2), *_cbr(8, 16), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 32), nn.ReLU(), nn.Linear(32, 10),
    )  # fmt: skip
    return model, _img()


class _BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv + BN downsample when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_cbr(cin, cout, stride=stride), *_cbr(cout, cout)[:2])
        same = stride == 1 and cin == cout
        down = [nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)]
        self.down = nn.Identity() if same else nn.Sequential(*down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.down(x))  # the add merges two channel spaces


def _resnet() -> tuple[nn.Module, Inputs]:
    model = nn.Sequential(*_cbr(3, 8), _BasicBlock(8, 8, 1), _BasicBlock(8, 16, 2), *_head(16))
    return model, _img()


class _SEBlock(nn.Module):
    """Squeeze-excitation: a per-channel sigmoid gate multiplied onto the feature map."""

    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)  # (B, C, 1, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))  # gate (B, C, 1, 1) broadcast


def _se() -> tuple[nn.Module, Inputs]:
    return nn.Sequential(*_cbr(3, 16), _SEBlock(16), *_cbr(16, 16), *_head(16)), _img()


class _Inception(nn.Module):
    """Four branches concatenated on channels: offsets 0, 4, 12, 16 of a 20-channel space."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.b1 = nn.Sequential(*_cbr(c, 4, 1))
        self.b3 = nn.Sequential(*_cbr(c, 8, 3))
        self.b5 = nn.Sequential(*_cbr(c, 4, 1), *_cbr(4, 4, 3))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), *_cbr(c, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)  # (B, 20, H, W)


def _inception() -> tuple[nn.Module, Inputs]:
    return nn.Sequential(*_cbr(3, 8), _Inception(8), *_cbr(20, 16, 1), *_head(16)), _img()


class _ChunkNet(nn.Module):
    """torch.chunk splits one channel space in two; the halves are processed, then re-joined."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_cbr(3, 16))
        self.left, self.right = nn.Sequential(*_cbr(8, 8)), nn.Sequential(*_cbr(8, 12))
        self.mix = nn.Sequential(*_cbr(20, 16, 1), *_head(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.chunk(self.stem(x), 2, dim=1)  # (B, 8, H, W) each
        return self.mix(torch.cat([self.left(a), self.right(b)], dim=1))  # (B, 20, H, W) in


class _InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, depthwise 3x3 (groups=C), 1x1 project, residual add."""

    def __init__(self, c: int, expand: int) -> None:
        super().__init__()
        h = c * expand
        self.body = nn.Sequential(*_cbr(c, h, 1), *_cbr(h, h, 3, groups=h), *_cbr(h, c, 1)[:2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _mobilenet() -> tuple[nn.Module, Inputs]:
    # Depthwise-separable stem (dw 8 + pw 8->16) then an inverted residual block.
    model = nn.Sequential(
        *_cbr(3, 8), *_cbr(8, 8, 3, groups=8), *_cbr(8, 16, 1), _InvertedResidual(16, 2), *_head(16)
    )
    return model, _img()


class _ShuffleUnit(nn.Module):
    """ShuffleNet unit: grouped 1x1 (groups=2), channel shuffle, depthwise 3x3, grouped 1x1, add."""

    def __init__(self, c: int, groups: int = 2) -> None:
        super().__init__()
        self.g = groups
        self.gconv1 = nn.Sequential(*_cbr(c, c, 1, groups=groups))
        self.dw = nn.Sequential(*_cbr(c, c, 3, groups=c)[:2])
        self.gconv2 = nn.Sequential(*_cbr(c, c, 1, groups=groups)[:2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gconv1(x)
        b, c, h, w = y.shape
        y = y.view(b, self.g, c // self.g, h, w).transpose(1, 2).reshape(b, c, h, w)  # shuffle
        return F.relu(x + self.gconv2(self.dw(y)))


def _shufflenet() -> tuple[nn.Module, Inputs]:
    return nn.Sequential(*_cbr(3, 8), _ShuffleUnit(8), _ShuffleUnit(8), *_head(8)), _img()


def _decoder() -> tuple[nn.Module, Inputs]:
    # ConvTranspose2d keeps its output channels on weight dim 1: (in, out, kh, kw).
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(),  # (B, 8, 4, 4)
        nn.ConvTranspose2d(8, 8, 2, 2), nn.BatchNorm2d(8), nn.ReLU(),  # (B, 8, 8, 8)
        nn.Conv2d(8, 3, 3, 1, 1),  # (B, 3, 8, 8): an image out
    )  # fmt: skip
    return model, _img()


def _conv1d() -> tuple[nn.Module, Inputs]:
    model = nn.Sequential(
        nn.Conv1d(4, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(),
        nn.Conv1d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 5),
    )  # fmt: skip
    return model, (torch.randn(2, 4, 16),)  # (B, C, L)


def _conv3d() -> tuple[nn.Module, Inputs]:
    model = nn.Sequential(
        nn.Conv3d(2, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(),
        nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 5),
    )  # fmt: skip
    return model, (torch.randn(2, 2, 4, 6, 6),)  # (B, C, D, H, W)


def _groupnorm() -> tuple[nn.Module, Inputs]:
    # GroupNorm normalises over groups of 2 channels: not zero-invariant channel by channel.
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(), *_head(16),
    )  # fmt: skip
    return model, _img()


def _token_mlp() -> tuple[nn.Module, Inputs]:
    # Channels-last LayerNorm over the hidden features of each token (B, T, 32).
    model = nn.Sequential(
        nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 10)
    )
    return model, (torch.randn(2, 6, 16),)  # (B, T, features)


def _mlp() -> tuple[nn.Module, Inputs]:
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))
    return model, (torch.randn(2, 20),)


class _TextClassifier(nn.Module):
    """Embedding (token ids, long) -> mean over tokens -> MLP."""

    def __init__(self, vocab: int = 64, dim: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.emb(ids).mean(1))  # (B, T) -> (B, T, dim) -> (B, dim) -> (B, 4)


class _AttentionNet(nn.Module):
    """nn.MultiheadAttention (4 heads of 8) over projected tokens, residual add, mean-pool, head.

    Under ``torch.no_grad()`` in eval mode torch may take MHA's fused "fast path"; graph
    capture (make_fx / torch.export) never does, so both paths compute the same function.
    """

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(16, d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=0.0, batch_first=True)
        self.out = nn.Sequential(nn.Linear(d, 32), nn.GELU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)  # (B, T, d)
        a, _ = self.attn(h, h, h, need_weights=False)  # (B, T, d)
        return self.out((h + a).mean(1))  # (B, 10)


class _EncoderNet(nn.Module):
    """Two nn.TransformerEncoderLayer blocks (dropout 0) between an input projection and a head.

    ``enable_nested_tensor=False`` keeps the encoder off its nested-tensor path; its eval-mode
    fused "fast path" is never taken under graph capture (see `_AttentionNet`).
    """

    def __init__(self, norm_first: bool, d: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(16, d)
        layer = nn.TransformerEncoderLayer(
            d, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True, norm_first=norm_first
        )
        self.enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.inp(x)).mean(1))  # (B, T, 16) -> (B, 10)


class _FunctionalNet(nn.Module):
    """Bare parameters used through ``F.linear`` and ``torch.matmul`` (no nn.Linear modules)."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(24, 16) / 4)  # (out, in) for F.linear
        self.b1 = nn.Parameter(torch.zeros(24))
        self.w2 = nn.Parameter(torch.randn(24, 6) / 5)  # (in, out) for x @ w2
        self.b2 = nn.Parameter(torch.zeros(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(F.linear(x, self.w1, self.b1))  # (B, 24)
        return torch.matmul(h, self.w2) + self.b2  # (B, 6)


class _LSTMNet(nn.Module):
    """An LSTM between two linear layers: geta has no LSTM handler, so its groups freeze."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.lstm = nn.LSTM(16, 16, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(F.relu(self.inp(x)))  # (B, T, 16)
        return self.head(y[:, -1])  # (B, 4)


class _UnknownOpNet(nn.Module):
    """A cumulative sum over channels mixes them: the first conv's group must be frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Sequential(*_cbr(3, 8)), nn.Sequential(*_cbr(8, 8))
        self.head = nn.Sequential(*_head(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(torch.cumsum(self.a(x), dim=1)))  # cumsum over C


def _add(name: str, factory: Callable[[], tuple[nn.Module, Inputs]], *tags: str) -> None:
    register(ZooEntry(name, factory, frozenset(tags)))


_add("plain_cnn", _plain_cnn, "cnn", "vision", "bn")
_add("vgg", _vgg, "cnn", "vision", "bn", "flatten")
_add("resnet", _resnet, "cnn", "vision", "bn", "residual")
_add("se_net", _se, "cnn", "vision", "bn", "gate")
_add("inception", _inception, "cnn", "vision", "bn", "concat")
_add("chunk_net", lambda: (_ChunkNet(), _img()), "cnn", "vision", "bn", "split", "concat")
_add("mobilenet", _mobilenet, "cnn", "vision", "bn", "depthwise", "residual")
_add("shufflenet", _shufflenet, "cnn", "vision", "bn", "grouped", "depthwise", "shuffle", "residual")
_add("decoder", _decoder, "cnn", "vision", "bn", "transposed-conv")
_add("conv1d", _conv1d, "cnn", "conv1d", "bn")
_add("conv3d", _conv3d, "cnn", "conv3d", "bn")
_add("groupnorm_cnn", _groupnorm, "cnn", "vision", "groupnorm")
_add("token_mlp", _token_mlp, "mlp", "layernorm")
_add("mlp", _mlp, "mlp")
_add("text_classifier", lambda: (_TextClassifier(), (torch.randint(64, (2, 8)),)), "mlp", "embedding", "text")
_add("mha", lambda: (_AttentionNet(), _tokens()), "attention", "residual")
_ENC = ("attention", "transformer", "residual", "layernorm")
_add("transformer_post_ln", lambda: (_EncoderNet(norm_first=False), _tokens()), *_ENC)
_add("transformer_pre_ln", lambda: (_EncoderNet(norm_first=True), _tokens()), *_ENC)
_add("functional", lambda: (_FunctionalNet(), (torch.randn(2, 16),)), "mlp", "functional")
_add("lstm", lambda: (_LSTMNet(), (torch.randn(2, 5, 8),)), "rnn", "unknown-op")
_add("unknown_op", lambda: (_UnknownOpNet(), _img()), "cnn", "vision", "bn", "unknown-op")
for _name, _factory, _tags in zoo_hf.SPECS:
    register(ZooEntry(_name, _factory, _tags, needs="transformers"))
