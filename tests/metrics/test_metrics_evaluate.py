"""evaluate(): keys, values and validation."""

from __future__ import annotations

import numpy as np
import pytest

from stratad.errors import DataError, MaskError
from stratad.metrics import aupro_key, evaluate


def _test_set() -> tuple[list[int], list[float], list[np.ndarray], list[np.ndarray]]:
    # Image 0 (anomalous): the tie case of test_metrics_pixel. Image 1 (normal) scores 0.95, 0, 0, 0.
    # Image 2 is labelled anomalous but its mask is empty: its 9 pixels (score 0) are defect-free.
    mask0 = np.array([[True, True, False, False, False, False]])
    map0 = np.array([[0.9, 0.5, 0.5, 0.5, 0.1, 0.1]], dtype=np.float32)
    mask1 = np.zeros((2, 2), dtype=bool)
    map1 = np.array([[0.95, 0.0], [0.0, 0.0]], dtype=np.float32)
    return (
        [1, 0, 1],
        [0.7, 0.2, 0.1],
        [mask0, mask1, np.zeros((3, 3), dtype=bool)],
        [map0, map1, np.zeros((3, 3))],
    )


def test_image_only_has_no_pixel_keys() -> None:
    labels, scores, _, _ = _test_set()
    # Image AUROC: 0.7 beats 0.2, 0.1 loses -> 0.5. F1: t=0.7 -> 2/3; t=0.1 -> 4/5 = 0.8.
    assert evaluate(labels, scores) == pytest.approx({"image_auroc": 0.5, "f1_max": 0.8}, abs=1e-12)


def test_pixel_keys_and_values() -> None:
    labels, scores, masks, maps = _test_set()
    results = evaluate(labels, scores, masks, maps)
    assert set(results) == {"image_auroc", "f1_max", "pixel_auroc", "aupro_30", "pixel_f1_max", "p_h"}
    assert all(type(v) is float for v in results.values())
    # 17 defect-free pixels. Curve: (1/17, 0) [t=0.95] -> (1/17, 0.5) [t=0.9] -> (3/17, 1) [t=0.5]
    # -> (5/17, 1) [t=0.1] -> (1, 1). Area to 0.3 = 0.75 * 2/17 + 1 * (0.3 - 3/17) = 3.6/17,
    # AU-PRO = 3.6 / 17 / 0.3 = 12/17.
    assert results["aupro_30"] == pytest.approx(12 / 17, abs=1e-12)
    # P_h = 2 * 0.5 * (12/17) / (0.5 + 12/17) = 12 / 20.5
    assert results["p_h"] == pytest.approx(12 / 20.5, abs=1e-12)


def test_aupro_key_names() -> None:
    assert aupro_key(0.3) == "aupro_30"
    assert aupro_key(0.05) == "aupro_5"
    assert aupro_key(1.0) == "aupro_100"
    assert aupro_key(0.005) == "aupro_0p5"
    labels, scores, masks, maps = _test_set()
    assert "aupro_5" in evaluate(labels, scores, masks, maps, fpr_limit=0.05)


def test_masks_without_maps_is_an_error() -> None:
    labels, scores, masks, _ = _test_set()
    with pytest.raises(DataError, match="maps is missing"):
        evaluate(labels, scores, masks=masks)


def test_shape_mismatch_names_index_and_shapes() -> None:
    labels, scores, masks, maps = _test_set()
    maps[2] = np.zeros((3, 4))
    with pytest.raises(MaskError, match=r"mask 2 has shape \(3, 3\) but anomaly map 2 has shape \(3, 4\)"):
        evaluate(labels, scores, masks, maps)


def test_mask_count_must_match_labels() -> None:
    labels, scores, masks, maps = _test_set()
    with pytest.raises(MaskError, match="2 masks for 3 labels"):
        evaluate(labels, scores, masks[:2], maps[:2])


def test_normal_image_with_defect_pixels_is_an_error() -> None:
    labels, scores, masks, maps = _test_set()
    labels[0] = 0
    with pytest.raises(MaskError, match="image 0 is labelled normal"):
        evaluate(labels, scores, masks, maps)


def test_labels_must_be_binary() -> None:
    _, scores, _, _ = _test_set()
    with pytest.raises(DataError, match="only 0"):
        evaluate([1, 0, 2], scores)
