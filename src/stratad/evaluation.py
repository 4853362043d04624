"""Evaluate a fitted pipeline on labelled test records with the field's metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from stratad.data.datasets import ImageRecord
from stratad.data.io import read_mask
from stratad.errors import StratadError
from stratad.pipeline import Pipeline, Prediction


def load_masks(records: Sequence[ImageRecord], sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Ground truth at each image's original resolution; good images (and defects without a mask
    file) get an empty mask."""
    masks = []
    for record, size in zip(records, sizes, strict=True):
        if record.mask_path is None:
            masks.append(np.zeros(size, dtype=bool))
        else:
            masks.append(read_mask(record.mask_path, expected_hw=size))
    return masks


def metrics_for(
    records: Sequence[ImageRecord], prediction: Prediction, fpr_limit: float = 0.3
) -> dict[str, Any]:
    from stratad.metrics import evaluate

    labels = np.array([r.label for r in records], dtype=np.int64)
    if labels.min() == labels.max():
        raise StratadError("the test set needs both good and defective images to compute metrics")
    if prediction.maps is None:
        return evaluate(labels, prediction.image_scores, fpr_limit=fpr_limit)
    masks = load_masks(records, prediction.original_sizes)
    maps = [prediction.map_at_original_size(i) for i in range(len(records))]
    return evaluate(labels, prediction.image_scores, masks, maps, fpr_limit=fpr_limit)


def evaluate_pipeline(
    pipeline: Pipeline,
    records: Sequence[ImageRecord],
    progress: Callable[[int], None] | None = None,
    fpr_limit: float = 0.3,
) -> tuple[dict[str, Any], Prediction]:
    if not records:
        raise StratadError("the test set is empty")
    t0 = time.perf_counter()
    prediction = pipeline.predict(records, progress)
    predict_s = time.perf_counter() - t0
    result = metrics_for(records, prediction, fpr_limit)
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
