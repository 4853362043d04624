"""Tiny images for the synthetic-defect tests: colourful textures and an object on a black background."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

SIZE = 64


def make_texture(seed: int, size: int = SIZE) -> np.ndarray:
    """Smooth random colour texture with values in [30, 230] (no zeros, strong local contrast)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(size, size, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 1.5)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    freq = rng.uniform(0.2, 0.6, size=3)
    waves = np.stack([np.sin(freq[c] * (xx + 0.7 * yy) + c) for c in range(3)], axis=2)
    field = smooth / (np.abs(smooth).max() + 1e-6) + 0.5 * waves
    field = (field - field.min()) / (field.max() - field.min())
    return (30 + 200 * field).round().astype(np.uint8)


def make_object(seed: int, size: int = SIZE, radius: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """A textured disk (values >= 60) on a near-black background; returns (image, disk mask)."""
    rng = np.random.default_rng(seed + 1000)
    yy, xx = np.mgrid[:size, :size]
    disk = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius**2
    texture = 60 + (make_texture(seed, size).astype(np.int16) * 195) // 255
    background = rng.integers(0, 4, size=(size, size, 3))
    image = np.where(disk[..., None], texture, background).astype(np.uint8)
    return image, disk


@pytest.fixture
def textures() -> list[np.ndarray]:
    return [make_texture(seed) for seed in range(3)]


@pytest.fixture
def object_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(target, source, target's disk) for an object on a dark background."""
    target, disk = make_object(0)
    source, _ = make_object(1)
    return target, source, disk
