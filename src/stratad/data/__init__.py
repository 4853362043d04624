"""Datasets, image loading and validation, deterministic splits."""

from __future__ import annotations

from stratad.data.datasets import (
    DatasetKind,
    DatasetSplit,
    ImageRecord,
    images_in,
    load_dataset,
    seeded_split,
)
from stratad.data.io import image_to_tensor, load_image, read_image_rgb, read_mask

__all__ = [
    "DatasetKind",
    "DatasetSplit",
    "ImageRecord",
    "image_to_tensor",
    "images_in",
    "load_dataset",
    "load_image",
    "read_image_rgb",
    "read_mask",
    "seeded_split",
]
