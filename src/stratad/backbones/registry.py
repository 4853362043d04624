"""Backbone registry: a name maps to a builder registered next to its definition (timm style).

Adding a backbone is one builder function decorated with ``@register_backbone("name")``; listing and
building always go through this module, never through an ``if name == ...`` chain.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

import torch
from torch import nn

from stratad.errors import BackboneError, WeightsNotFoundError
from stratad.registry import Registry

RGB = tuple[float, float, float]

IMAGENET_MEAN: RGB = (0.485, 0.456, 0.406)
IMAGENET_STD: RGB = (0.229, 0.224, 0.225)

WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".safetensors")


class BackboneSource(str, Enum):
    """Which library defines the architecture; it decides how torch.fx traces the model."""

    timm = "timm"
    torchvision = "torchvision"


class WeightsKind(Enum):
    imagenet = "imagenet"
    random = "random"
    file = "file"


@dataclass(frozen=True)
class WeightSource:
    """Where a backbone's weights come from: ImageNet (a shipped package or the hub cache), a seeded
    random initialisation, or a local file."""

    kind: WeightsKind
    path: Path | None = None

    @classmethod
    def parse(cls, weights: str | os.PathLike[str]) -> WeightSource:
        text = os.fspath(weights)
        if text.lower() in (WeightsKind.imagenet.value, WeightsKind.random.value):
            return cls(WeightsKind(text.lower()))
        path = Path(text).expanduser()
        if path.suffix.lower() not in WEIGHT_FILE_SUFFIXES:
            raise BackboneError(
                f"weights must be 'imagenet', 'random' or a {'/'.join(WEIGHT_FILE_SUFFIXES)} file, "
                f"got {text!r}."
            )
        if not path.is_file():
            raise WeightsNotFoundError(
                f"weights file {path} does not exist; pass an existing file, 'imagenet' or 'random'."
            )
        return cls(WeightsKind.file, path)


@dataclass(eq=False)
class Backbone:
    """A pretrained CNN ready for feature extraction.

    ``model`` is in eval mode; inputs must be RGB in [0, 1] normalised with ``mean`` / ``std``
    (:class:`~stratad.backbones.extractor.NodeExtractor` does that itself). ``weights`` describes the
    weight source for reports; ``native_size`` is the input side the weights were trained at.
    ``stages`` names the modules that end the network's stages, in order, and ``pooled`` the global
    pooling module (like timm's ``feature_info``): detectors choose their default nodes from them by
    stride (:func:`stratad.backbones.stages.stage_info`), never by backbone name.
    """

    name: str
    model: nn.Module
    mean: RGB
    std: RGB
    weights: str
    source: BackboneSource
    native_size: int = 224
    stages: tuple[str, ...] = ()
    pooled: str | None = None


BackboneBuilder = Callable[[WeightSource], Backbone]


def _load_builtin_backbones() -> None:
    # Importing the builder modules registers the built-in backbones.
    import stratad.backbones.efficientnet_lite
    import stratad.backbones.torchvision_models  # noqa: F401


BACKBONES: Registry[BackboneBuilder] = Registry("backbone", BackboneError, _load_builtin_backbones)


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Register ``builder(weights: WeightSource) -> Backbone`` under ``name``."""

    def decorator(builder: BackboneBuilder) -> BackboneBuilder:
        return BACKBONES.register(name, builder)

    return decorator


def list_backbones(pattern: str | None = None) -> list[str]:
    """Registered backbone names, optionally matching a glob such as ``"efficientnet_*"``."""
    return BACKBONES.names(pattern)


def build_backbone(name: str, weights: str | os.PathLike[str] = "imagenet", seed: int = 0) -> Backbone:
    """Build a registered backbone in eval mode.

    ``weights`` is ``"imagenet"``, ``"random"`` or a path to a local ``.pth`` / ``.pt`` /
    ``.safetensors`` state dict. The architecture is always built under ``torch.manual_seed(seed)``
    inside a forked RNG, so random weights are reproducible and the caller's RNG state is untouched.
    """
    builder = BACKBONES.get(name)
    source = WeightSource.parse(weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = builder(source)
    if source.kind is WeightsKind.random:
        backbone = replace(backbone, weights=f"random (seed {seed})")
    backbone.model.eval()
    return backbone
