"""Training-set augmentation: extra, transformed copies of the good training images.

Rippel et al. (Gaussian AD) enlarge small training sets with flips, rotations and colour jitter
chosen per category (flips and rotations only where the product's normal appearance is invariant
to them: textures, round objects). Each augmentation adds one transformed copy of every image.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import torch

from stratad.errors import StratadError


class Augmentation(str, enum.Enum):
    hflip = "hflip"
    vflip = "vflip"
    rot90 = "rot90"
    rot180 = "rot180"
    rot270 = "rot270"
    jitter = "jitter"


def parse_augmentations(names: Sequence[str]) -> list[Augmentation]:
    out = []
    for name in names:
        try:
            out.append(Augmentation(name.strip().lower()))
        except ValueError:
            choices = ", ".join(a.value for a in Augmentation)
            raise StratadError(f"unknown augmentation {name!r}; choose from {choices}") from None
    return out


def apply(images: torch.Tensor, kind: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Transform a batch (B, 3, H, W) in [0, 1]; ``jitter`` draws brightness / contrast per image."""
    if kind is Augmentation.hflip:
        return images.flip(-1)
    if kind is Augmentation.vflip:
        return images.flip(-2)
    if kind in (Augmentation.rot90, Augmentation.rot180, Augmentation.rot270):
        turns = {Augmentation.rot90: 1, Augmentation.rot180: 2, Augmentation.rot270: 3}[kind]
        return torch.rot90(images, turns, dims=(-2, -1))
    b = images.shape[0]
    brightness = 1.0 + (torch.rand(b, 1, 1, 1, generator=generator) - 0.5) * 0.2
    contrast = 1.0 + (torch.rand(b, 1, 1, 1, generator=generator) - 0.5) * 0.2
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images - mean) * contrast + mean * brightness).clamp(0.0, 1.0)


def augmented_batch(
    images: torch.Tensor, kinds: Sequence[Augmentation], generator: torch.Generator
) -> torch.Tensor:
    """The batch followed by one transformed copy per augmentation."""
    return torch.cat([images, *(apply(images, k, generator) for k in kinds)]) if kinds else images
