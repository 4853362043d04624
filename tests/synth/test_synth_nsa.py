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
