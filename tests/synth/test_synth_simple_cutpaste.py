"""Simple and CutPaste defects: masks are exact rectangles."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from stratad.synth import build_defect

SEEDS = range(20)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y, x, h, w) of the mask's bounding box, asserting the mask fills it."""
    ys, xs = np.nonzero(mask)
    y, x, h, w = ys.min(), xs.min(), ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert mask.sum() == h * w, "mask is not a filled rectangle"
    return int(y), int(x), int(h), int(w)


def _crop_positions(image: np.ndarray, patch: np.ndarray) -> list[tuple[int, int]]:
    """Every top-left position where ``patch`` occurs exactly in ``image``."""
    windows = sliding_window_view(image, patch.shape)[..., 0, :, :, :]
    hits = np.all(windows == patch, axis=(2, 3, 4))
    return [(int(y), int(x)) for y, x in zip(*np.nonzero(hits), strict=True)]


@pytest.mark.parametrize("seed", SEEDS)
def test_simple_zeroes_exactly_the_mask(seed: int, textures: list[np.ndarray]) -> None:
    target = textures[0]
    assert target.min() > 0
    defect = build_defect("simple", side_fraction_range=(0.1, 0.4))(target, None, np.random.default_rng(seed))
    assert defect.image.dtype == np.uint8 and defect.image.shape == target.shape
    assert defect.mask.dtype == bool and defect.mask.shape == target.shape[:2]
    np.testing.assert_array_equal((defect.image == 0).all(axis=2), defect.mask)
    np.testing.assert_array_equal(defect.image[~defect.mask], target[~defect.mask])
    _, _, h, w = _box(defect.mask)
    assert round(0.1 * 64) <= h <= round(0.4 * 64)
    assert round(0.1 * 64) <= w <= round(0.4 * 64)


def test_simple_sizes_cover_the_range(textures: list[np.ndarray]) -> None:
    gen = build_defect("simple", side_fraction_range=(0.05, 0.5))
    heights = [_box(gen(textures[0], None, np.random.default_rng(s)).mask)[2] for s in range(40)]
    assert min(heights) < 12 and max(heights) > 22


@pytest.mark.parametrize("seed", SEEDS)
def test_cutpaste_pastes_a_source_crop(seed: int, textures: list[np.ndarray]) -> None:
    target, source = textures[0], textures[1]
    defect = build_defect("cutpaste", geometry="li")(target, source, np.random.default_rng(seed))
    np.testing.assert_array_equal(defect.image[~defect.mask], target[~defect.mask])
    y, x, h, w = _box(defect.mask)
    patch = defect.image[y : y + h, x : x + w]
    assert len(_crop_positions(source, patch)) == 1
    # Li et al.'s geometry: area 2-15 % of the image, aspect ratio (w / h) in [0.3, 3.3], up to rounding.
    assert 0.02 * 64 * 64 * 0.7 <= h * w <= 0.15 * 64 * 64 * 1.3
    assert 0.3 * 0.7 <= w / h <= 3.3 / 0.7


@pytest.mark.parametrize("seed", SEEDS)
def test_cutpaste_without_source_uses_the_target(seed: int, textures: list[np.ndarray]) -> None:
    target = textures[2]
    defect = build_defect("cutpaste")(target, None, np.random.default_rng(seed))
    np.testing.assert_array_equal(defect.image[~defect.mask], target[~defect.mask])
    y, x, h, w = _box(defect.mask)
    positions = _crop_positions(target, defect.image[y : y + h, x : x + w])
    assert positions and (y, x) not in positions  # a crop of the target, pasted somewhere else
    assert (defect.image != target).any()


def test_cutpaste_with_a_smaller_source(textures: list[np.ndarray]) -> None:
    source = textures[1][:20, :30]
    gen = build_defect("cutpaste", geometry="li", area_fraction_range=(0.3, 0.5))
    for seed in range(10):
        defect = gen(textures[0], source, np.random.default_rng(seed))
        y, x, h, w = _box(defect.mask)
        assert h <= 20 and w <= 30
        assert len(_crop_positions(source, defect.image[y : y + h, x : x + w])) == 1


def test_cutpaste_color_jitter_changes_only_the_patch(textures: list[np.ndarray]) -> None:
    target, source = textures[0], textures[1]
    gen = build_defect("cutpaste", color_jitter=0.3)
    defect = gen(target, source, np.random.default_rng(3))
    np.testing.assert_array_equal(defect.image[~defect.mask], target[~defect.mask])
    y, x, h, w = _box(defect.mask)
    assert not _crop_positions(source, defect.image[y : y + h, x : x + w])
    again = gen(target, source, np.random.default_rng(3))
    np.testing.assert_array_equal(defect.image, again.image)


@pytest.mark.parametrize("kind", ["simple", "cutpaste"])
def test_selection_study_geometry_sides_and_border(kind: str) -> None:
    """The selection study's appendix: sides 10-50 % of the image's, at least 20 px from the border
    (checked on a 256 px image, the network size); on a 64 px image the margin shrinks to fit."""
    rng = np.random.default_rng(0)
    big = rng.integers(1, 256, (256, 256, 3), dtype=np.uint8)
    other = rng.integers(1, 256, (256, 256, 3), dtype=np.uint8)
    gen = build_defect(kind)
    heights, tops = [], []
    for seed in range(60):
        y, x, h, w = _box(gen(big, other, np.random.default_rng(seed)).mask)
        assert round(0.1 * 256) <= h <= round(0.5 * 256) and round(0.1 * 256) <= w <= round(0.5 * 256)
        assert min(y, x, 256 - y - h, 256 - x - w) >= 20
        heights.append(h)
        tops.append(y)
    assert min(heights) < 60 and max(heights) > 100  # the range is used, not one corner of it
    assert min(tops) < 30  # boxes come close to the margin
    small = rng.integers(1, 256, (64, 64, 3), dtype=np.uint8)
    for seed in range(20):
        y, x, h, w = _box(gen(small, small[::-1].copy(), np.random.default_rng(seed)).mask)
        assert y >= 0 and y + h <= 64 and min(y, 64 - y - h) >= min(20, (64 - h) // 2)
