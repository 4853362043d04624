"""One call that computes every metric of a test run, reporting pixel metrics only when maps exist."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from stratad.errors import DataError, MaskError
from stratad.metrics._validation import ArraySequence, check_fpr_limit, check_labels_scores
from stratad.metrics.image import f1_max, image_auroc
from stratad.metrics.pixel import PixelTruth, pixel_metrics_for_truth, truth_and_maps


def harmonic_mean(a: float, b: float) -> float:
    """Harmonic mean of two scores in [0, 1], e.g. P_h of image AUROC and AU-PRO; 0 if either is 0.

    Unlike the arithmetic mean it cannot hide a failed task behind a good one.
    """
    for name, value in (("a", a), ("b", b)):
        if not (math.isfinite(value) and value >= 0.0):
            raise DataError(f"harmonic_mean needs finite non-negative values, got {name}={value}.")
    if a == 0.0 or b == 0.0:
        return 0.0
    return 2.0 * a * b / (a + b)


def aupro_key(fpr_limit: float) -> str:
    """Result key of AU-PRO at ``fpr_limit``, in percent: ``aupro_30`` for 0.3, ``aupro_0p5`` for 0.005."""
    percent = f"{round(check_fpr_limit(fpr_limit) * 100, 6):g}"
    return "aupro_" + percent.replace(".", "p")


def evaluate(
    labels: npt.ArrayLike,
    image_scores: npt.ArrayLike,
    masks: ArraySequence | PixelTruth | None = None,
    maps: ArraySequence | None = None,
    fpr_limit: float = 0.3,
    pixel_images: npt.ArrayLike | None = None,
) -> dict[str, float]:
    """Every metric of one test set as plain floats in [0, 1].

    Always: ``image_auroc`` and ``f1_max``. With ``masks`` and ``maps`` (one per image, in the order
    of ``labels``) also ``pixel_auroc``, ``aupro_<limit%>``, ``pixel_f1_max`` and ``p_h``, the
    harmonic mean of image AUROC and AU-PRO; ``masks`` may be a :class:`PixelTruth` built once for
    many evaluations against the same masks. Detectors that give image scores only pass no maps and
    get no pixel keys, rather than made-up pixel numbers. ``pixel_images`` (indices into ``labels``)
    names the images whose masks and maps are given, when some images have no ground truth and leave
    the pixel metrics (image metrics still use every image).
    """
    checked_labels, checked_scores = check_labels_scores(labels, image_scores)
    limit = check_fpr_limit(fpr_limit)
    if (masks is None) != (maps is None):
        missing = "maps" if maps is None else "masks"
        raise DataError(
            f"pixel metrics need both masks and maps, but {missing} is missing; pass both or neither."
        )

    results = {
        "image_auroc": image_auroc(checked_labels, checked_scores),
        "f1_max": f1_max(checked_labels, checked_scores),
    }
    if masks is None or maps is None:
        return results

    truth, checked_maps = truth_and_maps(masks, maps)
    pixel_labels = checked_labels
    if pixel_images is not None:
        rows = np.asarray(pixel_images, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= checked_labels.shape[0]):
            raise DataError("pixel_images holds an index outside the test set")
        pixel_labels = checked_labels[rows]
    if len(checked_maps) != pixel_labels.shape[0]:
        raise MaskError(
            f"got {len(checked_maps)} masks for {pixel_labels.shape[0]} labels; pass one mask per test image."
        )
    for index, (n_defect, anomalous) in enumerate(zip(truth.defect_counts, pixel_labels, strict=True)):
        if not anomalous and n_defect:
            raise MaskError(
                f"image {index} is labelled normal but its mask marks {n_defect} "
                "defect pixels; fix the label or the mask."
            )

    pixel = pixel_metrics_for_truth(truth, checked_maps, limit)
    results["pixel_auroc"] = pixel.pixel_auroc
    results[aupro_key(limit)] = pixel.aupro
    results["pixel_f1_max"] = pixel.pixel_f1_max
    results["p_h"] = harmonic_mean(results["image_auroc"], pixel.aupro)
    return results
