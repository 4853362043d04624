"""Properties every generator shares, and make_synthetic_set."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stratad.errors import DataError
from stratad.synth import DefectKind, build_defect, make_synthetic_set

KINDS = list(DefectKind)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_output_and_different_seed_differs(
    kind: DefectKind, textures: list[np.ndarray]
) -> None:
    target, source = textures[0], textures[1]
    before = target.copy()
    first = build_defect(kind)(target, source, np.random.default_rng(123))
    second = build_defect(kind)(target, source, np.random.default_rng(123))
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.mask, second.mask)
    np.testing.assert_array_equal(target, before)  # the input is never modified
    others = [build_defect(kind)(target, source, np.random.default_rng(s)) for s in (1, 2, 3)]
    assert all(not np.array_equal(o.mask, first.mask) for o in others)
    assert all(not np.array_equal(o.image, first.image) for o in others)


@pytest.mark.parametrize("kind", KINDS)
def test_grayscale_replicated_images_stay_gray(kind: DefectKind, textures: list[np.ndarray]) -> None:
    gray = [np.repeat(t[..., :1], 3, axis=2) for t in textures[:2]]
    for seed in range(5):
        defect = build_defect(kind)(gray[0], gray[1], np.random.default_rng(seed))
        assert defect.mask.any()
        np.testing.assert_array_equal(defect.image[..., 0], defect.image[..., 1])
        np.testing.assert_array_equal(defect.image[..., 0], defect.image[..., 2])
        np.testing.assert_array_equal(defect.image[~defect.mask], gray[0][~defect.mask])


@pytest.mark.parametrize("kind", KINDS)
def test_make_synthetic_set(kind: DefectKind, textures: list[np.ndarray]) -> None:
    defects = make_synthetic_set(textures, kind, 7, np.random.default_rng(0))
    assert len(defects) == 7
    targets = [d.target_index for d in defects]
    assert sorted(targets[:6]) == [0, 0, 1, 1, 2, 2]  # every image used equally often
    for d in defects:
        assert d.source_index is not None and d.source_index != d.target_index
        target = textures[d.target_index]
        np.testing.assert_array_equal(d.image[~d.mask], target[~d.mask])
    again = make_synthetic_set(textures, kind, 7, np.random.default_rng(0))
    assert [d.target_index for d in again] == targets
    assert all(np.array_equal(a.image, b.image) for a, b in zip(defects, again, strict=True))


def test_make_synthetic_set_single_image_and_params(textures: list[np.ndarray]) -> None:
    defects = make_synthetic_set(textures[:1], "cutpaste", 3, np.random.default_rng(0), color_jitter=0.1)
    assert [d.target_index for d in defects] == [0, 0, 0]
    assert all(d.source_index is None for d in defects)
    assert make_synthetic_set(textures, "simple", 0, np.random.default_rng(0)) == []


@pytest.mark.parametrize(
    ("images", "n", "params"),
    [([], 3, {}), (None, -1, {}), (None, 2.5, {}), (None, 2, {"bogus": 1})],
)
def test_make_synthetic_set_rejects_bad_arguments(
    images: list | None, n: Any, params: dict, textures: list[np.ndarray]
) -> None:
    with pytest.raises(DataError):
        make_synthetic_set(
            textures if images is None else images, "simple", n, np.random.default_rng(0), **params
        )
