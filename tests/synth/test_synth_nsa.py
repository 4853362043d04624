"""NSA: Poisson-blended patches, masks measured from the change, restricted to the foreground."""

from __future__ import annotations

import numpy as np
import pytest

from stratad.errors import DataError
from stratad.synth import build_defect, foreground_mask

from .conftest import make_object, make_texture

SEEDS = range(12)


@pytest.mark.parametrize("seed", SEEDS)
def test_nsa_mask_covers_exactly_the_change(seed: int, textures: list[np.ndarray]) -> None:
    target, source = textures[0], textures[1]
    defect = build_defect("nsa")(target, source, np.random.default_rng(seed))
    assert defect.image.dtype == np.uint8 and defect.image.shape == target.shape
    assert defect.mask.dtype == bool and defect.mask.shape == target.shape[:2]
    assert defect.mask.sum() >= 16
    np.testing.assert_array_equal(defect.image[~defect.mask], target[~defect.mask])
    change = np.abs(defect.image.astype(int) - target.astype(int)).max(axis=2)
    assert change[defect.mask].mean() > 3
    # Poisson blending needs a margin: nothing can change on the image border.
    assert not defect.mask[[0, -1], :].any() and not defect.mask[:, [0, -1]].any()


@pytest.mark.parametrize("seed", SEEDS)
def test_nsa_stays_on_the_object(seed: int, object_pair: tuple[np.ndarray, ...]) -> None:
    target, source, disk = object_pair
    defect = build_defect("nsa")(target, source, np.random.default_rng(seed))
    assert defect.mask.any()
    assert not (defect.mask & ~disk).any()
    np.testing.assert_array_equal(defect.image[~disk], target[~disk])


def test_nsa_without_foreground_leaves_the_object() -> None:
    target, disk = make_object(0, radius=14)
    source, _ = make_object(1, radius=14)
    gen = build_defect("nsa", foreground=False)
    outside = [(gen(target, source, np.random.default_rng(s)).mask & ~disk).any() for s in range(10)]
    assert any(outside)


@pytest.mark.parametrize("clone_mode", ["normal", "mixed"])
def test_nsa_clone_modes_and_self_source(clone_mode: str, textures: list[np.ndarray]) -> None:
    gen = build_defect("nsa", clone_mode=clone_mode, max_patches=1)
    defect = gen(textures[2], None, np.random.default_rng(5))
    assert defect.mask.any()
    np.testing.assert_array_equal(defect.image[~defect.mask], textures[2][~defect.mask])


def test_nsa_with_sources_of_other_sizes(textures: list[np.ndarray]) -> None:
    gen = build_defect("nsa")
    for source in (make_texture(7, size=24), make_texture(8, size=150)):
        defect = gen(textures[0], source, np.random.default_rng(1))
        assert defect.mask.any()


def test_nsa_accepts_non_contiguous_views(textures: list[np.ndarray]) -> None:
    view = textures[0][:, ::-1]
    defect = build_defect("nsa")(view, textures[1][::-1], np.random.default_rng(2))
    np.testing.assert_array_equal(defect.image[~defect.mask], view[~defect.mask])


def test_nsa_raises_when_nothing_visible_changes() -> None:
    flat = np.full((64, 64, 3), 120, dtype=np.uint8)
    with pytest.raises(DataError, match="no visible defect"):
        build_defect("nsa", max_attempts=3)(flat, flat.copy(), np.random.default_rng(0))


def test_foreground_of_an_object_on_black() -> None:
    image, disk = make_object(3)
    fg = foreground_mask(image)
    iou = (fg & disk).sum() / (fg | disk).sum()
    assert iou > 0.95


def test_foreground_of_textures_and_flat_images_is_everything() -> None:
    assert foreground_mask(make_texture(4)).all()
    assert foreground_mask(np.full((32, 32, 3), 7, dtype=np.uint8)).all()


def test_official_settings_by_category_type() -> None:
    """Objects: up to 3 patches, on the product; textures: up to 4, anywhere. The first patch always,
    each further one with probability 1/2 (so one patch alone has probability 1/4 resp. 1/8)."""
    from stratad.synth.nsa import NSADefect

    obj = build_defect("nsa")
    tex = build_defect("nsa", category_type="texture")
    assert isinstance(obj, NSADefect) and isinstance(tex, NSADefect)
    assert (obj.max_patches, obj.uses_foreground) == (3, True)
    assert (tex.max_patches, tex.uses_foreground) == (4, False)
    rng = np.random.default_rng(0)
    counts = np.array([tex._patch_count(rng) for _ in range(4000)])
    assert set(counts) == {1, 2, 3, 4}
    assert abs((counts == 1).mean() - 1 / 8) < 0.02 and abs(counts.mean() - 2.5) < 0.05
    # Crop half-widths: 0.03 + Gamma(2, 0.05) of the side, clipped to [0.03, 0.4]: mean side ~0.26.
    sides = np.array([obj._crop_side(256, rng) for _ in range(4000)]) / 256
    assert sides.min() >= 0.06 - 1e-9 and sides.max() <= 0.8 + 1e-9
    assert abs(sides.mean() - 2 * (0.03 + 0.1)) < 0.01
    scales = np.array([obj._scale(rng) for _ in range(2000)])
    assert scales.min() == 0.7 and scales.max() == 1.3  # N(1, 0.5) clipped: both bounds are hit


def test_category_type_is_detected() -> None:
    from stratad.synth.foreground import detect_category_type

    assert detect_category_type([make_texture(s) for s in range(4)]) == "texture"
    assert detect_category_type([make_object(s)[0] for s in range(4)]) == "object"
