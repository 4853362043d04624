"""The synthetic validation set: good images plus images with synthetic defects and exact masks.

Defects are made at the network input size, so masks need no resampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from stratad.data.datasets import ImageRecord
from stratad.data.io import read_image_rgb
from stratad.selection.split import SelectionSplit


@dataclass
class ValidationSet:
    """Images uint8 (M, 3, S, S), masks bool (M, S, S), labels (M,)."""

    images: torch.Tensor
    masks: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


def resized_rgb(record: ImageRecord | Any, size: int, bit_depth: int | None = None) -> np.ndarray:
    path = record.path if isinstance(record, ImageRecord) else record
    rgb = read_image_rgb(path, bit_depth)
    if rgb.shape[:2] != (size, size):
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))
    return rgb


def to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def build_validation_set(
    split: SelectionSplit,
    kind: str,
    image_size: int,
    seed: int = 0,
    bit_depth: int | None = None,
    **defect_params: Any,
) -> ValidationSet:
    """Good D_V images unchanged; each defect-bound D_V image gets one synthetic defect whose
    source (for CutPaste / NSA) is a random D_T image."""
    from stratad.synth import build_defect

    generator = build_defect(kind, **defect_params)
    rng = np.random.default_rng(seed)
    good = [resized_rgb(r, image_size, bit_depth) for r in split.val_good]
    defective, masks = [], []
    for record in split.val_defect:
        target = resized_rgb(record, image_size, bit_depth)
        source = resized_rgb(split.fit[int(rng.integers(len(split.fit)))], image_size, bit_depth)
        made = generator(target, source, rng)
        defective.append(made.image)
        masks.append(made.mask)
    empty = [np.zeros((image_size, image_size), dtype=bool)] * len(good)
    labels = np.array([0] * len(good) + [1] * len(defective), dtype=np.int64)
    return ValidationSet(to_tensor(good + defective), np.stack(empty + masks), labels)


def resized_mask(record: ImageRecord, size: int) -> np.ndarray:
    """Ground truth at the network input size (nearest neighbour after binarising), empty for good images."""
    from stratad.data.io import image_size_of, read_mask

    if record.mask_path is None:
        return np.zeros((size, size), dtype=bool)
    mask = read_mask(record.mask_path, expected_hw=image_size_of(record.path))
    pil = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(pil) > 127
