"""Evaluation metrics with the semantics of the official MVTec AD evaluation code.

Image level: :func:`image_auroc`, :func:`f1_max`. Pixel level, from one sort of all pixel scores:
:func:`pixel_metrics` (or :func:`pixel_auroc`, :func:`aupro`, :func:`pro_curve` alone), against masks
or a :class:`PixelTruth` prepared once for many sets of maps. Summary:
:func:`evaluate`, :func:`harmonic_mean`. Gaussian working points: :func:`chi2_threshold`,
:func:`sigma_to_fpr`; thresholds from data and the model file's :class:`Calibration` in
:mod:`stratad.metrics.thresholds`.

The names are imported on first use: loading a model (which reads its thresholds from
``thresholds``) does not import scikit-learn, which the AUROC functions need (0.6 s).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stratad._lazy import lazy_attributes

if TYPE_CHECKING:
    from stratad.metrics.image import f1_max, image_auroc
    from stratad.metrics.pixel import (
        PixelMetrics,
        PixelTruth,
        aupro,
        pixel_auroc,
        pixel_metrics,
        pro_curve,
        trapezoid,
    )
    from stratad.metrics.summary import aupro_key, evaluate, harmonic_mean
    from stratad.metrics.thresholds import Calibration, chi2_threshold, sigma_to_fpr

_WHERE = {
    "f1_max": "image",
    "image_auroc": "image",
    **dict.fromkeys(
        ["PixelMetrics", "PixelTruth", "aupro", "pixel_auroc", "pixel_metrics", "pro_curve", "trapezoid"],
        "pixel",
    ),
    **dict.fromkeys(["aupro_key", "evaluate", "harmonic_mean"], "summary"),
    **dict.fromkeys(["Calibration", "chi2_threshold", "sigma_to_fpr"], "thresholds"),
}
__getattr__ = lazy_attributes(__name__, _WHERE)
__all__ = [
    "Calibration",
    "PixelMetrics",
    "PixelTruth",
    "aupro",
    "aupro_key",
    "chi2_threshold",
    "evaluate",
    "f1_max",
    "harmonic_mean",
    "image_auroc",
    "pixel_auroc",
    "pixel_metrics",
    "pro_curve",
    "sigma_to_fpr",
    "trapezoid",
]
