"""From a score and a map to what an inspector reads: the decision, the normalised score, the defect
mask and its area, with the thresholds a model file stores (:class:`stratad.metrics.Calibration`).
``predict``, ``report`` and ``serve`` all go through :func:`decide`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stratad.metrics.thresholds import Calibration


@dataclass
class ImageDecision:
    score: float
    #: 0.5 at the image threshold (None: the model has no thresholds, ``fit --calibrate``)
    normalized: float | None
    #: True defective, False good, None without thresholds
    defective: bool | None
    #: the map at the image's own size (None for detectors without maps)
    anomaly_map: np.ndarray | None
    #: pixels over the pixel threshold, at the image's own size, in an image judged defective (empty
    #: for an image judged good; None without a pixel threshold)
    mask: np.ndarray | None
    #: fraction of the image's pixels in the mask, and their number
    defect_area: float | None
    defect_pixels: int | None

    def as_dict(self) -> dict[str, Any]:
        """The JSON-able numbers (no arrays)."""
        return {
            "score": self.score,
            "normalized_score": self.normalized,
            "decision": None if self.defective is None else ("defective" if self.defective else "good"),
            "defect_area": self.defect_area,
            "defect_pixels": self.defect_pixels,
        }


def decide(
    calibration: Calibration | None, score: float, small_map: np.ndarray | None, size: tuple[int, int]
) -> ImageDecision:
    """The decision for one image of ``size`` (H, W) from its score and its map at the network size
    (resized to the image's own size, as ``predict`` writes it)."""
    from stratad.pipeline import resize_map

    full = None if small_map is None else resize_map(small_map, size)
    if calibration is None:
        return ImageDecision(float(score), None, None, full, None, None, None)
    defective = bool(calibration.decide(score))
    mask = area = count = None
    if full is not None and calibration.pixel_threshold is not None:
        # The decision says whether, the mask where: an image judged good has an empty mask (at a
        # pixel rate of 1 %, most good images have a few pixels over the pixel threshold).
        mask = calibration.mask(full) if defective else np.zeros(full.shape, dtype=bool)
        count = int(np.count_nonzero(mask))
        area = count / mask.size
    return ImageDecision(
        float(score), float(calibration.normalize(score)), defective, full, mask, area, count
    )


def decide_image(pipeline: Any, rgb: np.ndarray) -> ImageDecision:
    """Score one decoded uint8 (H, W, 3) image with a pipeline (or an ONNX model) and decide."""
    score, small = pipeline.score_image(rgb)
    return decide(getattr(pipeline, "calibration_", None), float(score[0]), small, rgb.shape[:2])
