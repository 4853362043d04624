"""Evaluate a fitted pipeline on labelled test records with the field's metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from stratad.data.datasets import ImageRecord, MissingMasks, pixel_records, record_mask
from stratad.errors import StratadError
from stratad.pipeline import Pipeline, Prediction


def metrics_for(
    records: Sequence[ImageRecord],
    prediction: Prediction,
    fpr_limit: float = 0.3,
    missing_masks: MissingMasks | str = MissingMasks.error,
) -> dict[str, Any]:
    from stratad.metrics import evaluate

    labels = np.array([r.label for r in records], dtype=np.int64)
    if labels.min() == labels.max():
        raise StratadError("the test set needs both good and defective images to compute metrics")
    if prediction.maps is None:
        return evaluate(labels, prediction.image_scores, fpr_limit=fpr_limit)
    keep, missing = pixel_records(list(records), missing_masks)
    masks = [record_mask(records[i], prediction.original_sizes[i]) for i in keep]
    maps = [prediction.map_at_original_size(i) for i in keep]
    result: dict[str, Any] = evaluate(
        labels, prediction.image_scores, masks, maps, fpr_limit=fpr_limit, pixel_images=keep
    )
    result["n_excluded_from_pixel_metrics"] = len(missing)
    return result


def evaluate_pipeline(
    pipeline: Pipeline,
    records: Sequence[ImageRecord],
    progress: Callable[[int], None] | None = None,
    fpr_limit: float = 0.3,
    missing_masks: MissingMasks | str = MissingMasks.error,
) -> tuple[dict[str, Any], Prediction]:
    """Score ``records`` and compute every metric. Missing masks are checked before any scoring."""
    if not records:
        raise StratadError("the test set is empty")
    if pipeline.detector.localizes:
        pixel_records(list(records), missing_masks)
    t0 = time.perf_counter()
    prediction = pipeline.predict(records, progress)
    predict_s = time.perf_counter() - t0
    result = metrics_for(records, prediction, fpr_limit, missing_masks)
    result.update(
        {
            "n_test_images": len(records),
            "n_defective": int(sum(r.label for r in records)),
            "predict_seconds": round(predict_s, 3),
            "predict_images_per_second": round(len(records) / max(predict_s, 1e-9), 3),
            "localizes": prediction.maps is not None,
            **pipeline.describe(),
        }
    )
    return result, prediction
