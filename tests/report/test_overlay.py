"""The decision overlay at the image's own resolution, for ordinary and degenerate image shapes."""

from __future__ import annotations

import numpy as np
import pytest

from stratad.report.overlay import JPEG_MAX_SIDE, decision_overlay, encode_image


def _overlay(h: int, w: int, defective: bool | None = True) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    anomaly_map = rng.random((h, w)).astype(np.float32)
    return decision_overlay(
        image,
        anomaly_map,
        0.0,
        1.0,
        score=3.2,
        normalized=0.8,
        defective=defective,
        mask=anomaly_map > 0.9,
        pixel_threshold=0.9,
    )


def test_the_image_keeps_its_resolution_with_a_banner_above_and_a_bar_beside() -> None:
    out = _overlay(600, 900)
    banner, bar = out.shape[0] - 600, out.shape[1] - 900
    assert 22 <= banner <= 60 and 56 <= bar <= 120
    assert tuple(out[2, 2]) == (200, 30, 30)  # the defective banner's red
    assert tuple(_overlay(600, 900, defective=False)[2, 2]) == (30, 140, 60)
    assert tuple(_overlay(600, 900, defective=None)[2, 2]) == (90, 90, 90)
    strip = out[banner + 100 : banner + 500, 900 + bar // 4]
    assert len({tuple(p) for p in strip}) > 50  # a colour gradient


@pytest.mark.parametrize(("h", "w"), [(1, 1), (1, 300), (300, 1), (2, 5000), (17, 17)])
def test_degenerate_shapes_give_an_overlay_not_an_error(h: int, w: int) -> None:
    out = _overlay(h, w)
    assert out.shape[0] >= h + 22 and out.shape[1] >= w + 56 and out.shape[0] < h + 100
    assert encode_image(out, "jpg")[:2] == b"\xff\xd8"


def test_overlays_wider_than_jpeg_allows_are_shrunk_to_fit() -> None:
    import cv2

    wide = np.zeros((4, JPEG_MAX_SIDE + 500, 3), np.uint8)
    decoded = cv2.imdecode(np.frombuffer(encode_image(wide, "jpg"), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[1] == JPEG_MAX_SIDE
