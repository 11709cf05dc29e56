"""The models of the coverage run: torchvision builders, a timm set and the HF families.

Every model is built with random weights (``weights=None``, ``pretrained=False``): nothing is
downloaded. Inputs are one image of 64 x 64 unless a model needs more (its own size checks), so
that even the largest builders fit in memory and time. `specs` lists them by source:

- ``torchvision``: every classification builder of ``torchvision.models.list_models``;
- ``torchvision-seg`` / ``torchvision-det``: the segmentation and detection builders, with their
  backbone weights off and detection resized to 64 pixels (eval mode: a list of images in);
- ``timm``: a representative set, one or two per architecture family;
- ``hf``: the tiny families of `bench.coverage_hf`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["Spec", "SOURCES", "TIMM", "specs"]

Built = tuple[nn.Module, Any]  # (model in eval mode, example inputs: a tuple or a dict)

SOURCES = ("torchvision", "torchvision-seg", "torchvision-det", "timm", "hf")


@dataclass(frozen=True)
class Spec:
    """One model of the run: where it comes from, how to build it, or why it is left out."""

    source: str
    name: str
    build: Callable[[], Built]
    skip: str | None = None  # a reason to leave it out (recorded in the table)
    timeout: float = 900.0  # seconds for build + check in its own process (VGG-16: 80 s under load)


def _image(size: int = 64) -> tuple[torch.Tensor]:
    return (torch.randn(1, 3, size, size),)


# -- torchvision ---------------------------------------------------------------------------------

# Builders whose own checks need another input size or constructor argument.
_TV_KWARGS: dict[str, dict[str, Any]] = {
    "vit_b_16": {"image_size": 64},
    "vit_b_32": {"image_size": 64},
    "vit_l_16": {"image_size": 64},
    "vit_l_32": {"image_size": 64},
    "vit_h_14": {"image_size": 56},
}
_TV_SIZE = {"inception_v3": 96, "maxvit_t": 224, "vit_h_14": 56}  # maxvit: fixed 7x7 partitions
_TV_SKIP = {
    "vit_h_14": "632 M parameters: left out for time (run with --large)",
    "regnet_y_128gf": "645 M parameters: left out for time (run with --large)",
}


def _torchvision_classifier(name: str) -> Callable[[], Built]:
    def build() -> Built:
        import torchvision

        model = torchvision.models.get_model(name, weights=None, **_TV_KWARGS.get(name, {}))
        return model.eval(), _image(_TV_SIZE.get(name, 64))

    return build


def _torchvision_segmenter(name: str) -> Callable[[], Built]:
    def build() -> Built:
        import torchvision

        model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
        return model.eval(), _image(64)

    return build


def _torchvision_detector(name: str) -> Callable[[], Built]:
    def build() -> Built:
        import torchvision

        kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None}
        if not name.startswith("ssd"):  # the R-CNNs, RetinaNet and FCOS resize to min_size
            kwargs.update(min_size=64, max_size=64)
        model = torchvision.models.get_model(name, **kwargs)
        return model.eval(), ([torch.rand(3, 64, 64)],)  # eval mode: a list of (C, H, W) images

    return build


def _torchvision(large: bool) -> list[Spec]:
    import torchvision.models as tvm

    out = [
        Spec("torchvision", n, _torchvision_classifier(n), None if large else _TV_SKIP.get(n))
        for n in tvm.list_models(module=tvm)
    ]
    out += [
        Spec("torchvision-seg", n, _torchvision_segmenter(n))
        for n in tvm.list_models(module=tvm.segmentation)
    ]
    out += [
        Spec("torchvision-det", n, _torchvision_detector(n)) for n in tvm.list_models(module=tvm.detection)
    ]
    return out


# -- timm ----------------------------------------------------------------------------------------

TIMM: dict[str, dict[str, Any]] = {
    "resnet50": {},
    "resnest14d": {},  # split attention
    "efficientnet_b0": {},
    "tf_efficientnetv2_b0": {},
    "convnext_atto": {},
    "regnetx_002": {},
    "regnety_002": {},
    "mobilenetv3_large_100": {},
    "ghostnet_100": {},
    "densenet121": {},
    "dla34": {},
    "vit_tiny_patch16_224": {"img_size": 64},
    "deit_tiny_patch16_224": {"img_size": 64},
    "cait_xxs24_224": {"img_size": 64},
    "swin_tiny_patch4_window7_224": {},
    "pvt_v2_b0": {},
    "mixer_s16_224": {"img_size": 64},
    "poolformer_s12": {},
    "mobilevit_xxs": {},
    "levit_128s": {"img_size": 64},
}
"""timm model name -> extra ``create_model`` arguments (a smaller image where the model allows)."""


def _timm_model(name: str, kwargs: dict[str, Any]) -> Callable[[], Built]:
    def build() -> Built:
        import timm

        model = timm.create_model(name, pretrained=False, **kwargs)
        return model.eval(), _image(kwargs.get("img_size", 224 if "swin" in name else 64))

    return build


def _timm() -> list[Spec]:
    return [Spec("timm", n, _timm_model(n, kw)) for n, kw in TIMM.items()]


# -- Hugging Face --------------------------------------------------------------------------------


def _hf() -> list[Spec]:
    from bench.coverage_hf import FAMILIES

    return [Spec("hf", n, f, timeout=120.0) for n, f in FAMILIES.items()]


def specs(sources: tuple[str, ...] = SOURCES, *, large: bool = False) -> list[Spec]:
    """The models of the given sources, in table order."""
    out: list[Spec] = []
    if {"torchvision", "torchvision-seg", "torchvision-det"} & set(sources):
        out += [s for s in _torchvision(large) if s.source in sources]
    if "timm" in sources:
        out += _timm()
    if "hf" in sources:
        out += _hf()
    return out
