"""Full-size model shapes for the benchmarks, built in-repo (torchvision is not a dependency).

`resnet50()` has the layer shapes of the standard ResNet-50 (v1.5: the stride sits in the 3x3
convolution of a bottleneck): a 7x7 stem, bottleneck stages of 3, 4, 6 and 3 blocks with widths
64, 128, 256 and 512 (x4 at the block output), global pooling and a 1000-way classifier,
25.6 M parameters. `bert_small()` is a BERT encoder of the "BERT-Small" shape (4 layers,
hidden 512, 8 heads, feed-forward 2048) with a 2-way classification head, from a
``transformers`` config (random weights, no download).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Bottleneck", "ResNet50", "bert_small", "resnet50"]


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride) -> 1x1 expand (x4), each with BatchNorm, plus the shortcut."""

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.down: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))  # (B, width, H, W)
        h = F.relu(self.bn2(self.conv2(h)))  # (B, width, H/s, W/s)
        h = self.bn3(self.conv3(h))  # (B, 4·width, H/s, W/s)
        return F.relu(h + (x if self.down is None else self.down(x)))


class ResNet50(nn.Module):
    """(B, 3, 224, 224) -> (B, classes)."""

    def __init__(self, classes: int = 1000, blocks: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, c_in = [], 64
        for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
            layers = []
            for j in range(n):
                layers.append(Bottleneck(c_in, width, 2 if j == 0 and i > 0 else 1))
                c_in = 4 * width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)  # (B, 64, 56, 56)
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))  # (B, 2048, 7, 7)
        return self.fc(h.mean((2, 3)))  # (B, classes)


def resnet50(seed: int = 0) -> nn.Module:
    """A ResNet-50 in eval mode with seeded random weights."""
    torch.manual_seed(seed)
    return ResNet50().eval()


def bert_small(seed: int = 0) -> nn.Module:
    """BertForSequenceClassification of the BERT-Small shape, SDPA attention, dropout 0, eval mode."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=2048,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2,
        attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(seed)
    return BertForSequenceClassification(config).eval()
