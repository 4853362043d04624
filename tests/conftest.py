"""Shared fixtures: tiny datasets made on the fly, and the real MTD data when ../shared has it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_MTD = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "mtd"


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> object:
    # Commands that cache results (receptive fields) must not write into the user's home.
    patch = pytest.MonkeyPatch()
    patch.setenv("STRATAD_CACHE_DIR", str(tmp_path_factory.mktemp("stratad_cache")))
    yield
    patch.undo()


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    # Smooth stripes + mild noise: a "product" whose normal appearance is easy to learn.
    _, xx = np.mgrid[0:size, 0:size]
    phase = rng.uniform(0, 2 * np.pi)
    base = 128 + 60 * np.sin(xx / 3.0 + phase) + rng.normal(0, 6, (size, size))
    return np.clip(np.stack([base] * 3, -1), 0, 255).astype(np.uint8)


def make_mvtec(
    root: Path, n_train: int = 8, n_good: int = 4, n_bad: int = 4, size: int = 64, seed: int = 0
) -> Path:
    """A tiny MVTec-AD category: defects are bright squares with exact masks."""
    rng = np.random.default_rng(seed)
    cat = root / "widget"
    for sub in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (cat / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(_texture(rng, size)).save(cat / "train/good" / f"{i:03d}.png")
    for i in range(n_good):
        Image.fromarray(_texture(rng, size)).save(cat / "test/good" / f"{i:03d}.png")
    for i in range(n_bad):
        img = _texture(rng, size)
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(4, size - 20, size=2)
        img[y : y + 16, x : x + 16] = 255
        mask[y : y + 16, x : x + 16] = 255
        Image.fromarray(img).save(cat / "test/spot" / f"{i:03d}.png")
        Image.fromarray(mask).save(cat / "ground_truth/spot" / f"{i:03d}_mask.png")
    return cat


@pytest.fixture
def tiny_mvtec(tmp_path: Path) -> Path:
    return make_mvtec(tmp_path / "mvtec")


@pytest.fixture(scope="session")
def mtd_root() -> Path:
    if not (SHARED_MTD / "MT_Free").is_dir():
        pytest.skip("../shared/datasets/mtd is absent")
    return SHARED_MTD
