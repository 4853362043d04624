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
    check_unseen(pipeline, records)
    t0 = time.perf_counter()
    prediction = pipeline.predict(records, progress)
    predict_s = time.perf_counter() - t0
    result = metrics_for(records, prediction, fpr_limit, missing_masks)
    if pipeline.calibration_ is not None:
        keep = pixel_records(list(records), missing_masks)[0] if prediction.maps is not None else []
        result["at_threshold"] = rates_at_calibration(pipeline.calibration_, records, prediction, keep)
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


# -- calibration: thresholds stored in the model file ---------------------------------------------------
#: pixels entering the pixel F1 threshold (an evenly spaced sample of larger validation sets)
F1_MAX_PIXELS = 20_000_000


def seen_digests(records: Sequence[ImageRecord]) -> tuple[str, ...]:
    """Sorted content digests of images (:func:`stratad.data.io.content_digest`), as a model file
    records the images it was fitted and calibrated on."""
    from stratad.data.io import content_digest

    return tuple(sorted({content_digest(r.path) for r in records}))


def check_unseen(pipeline: Pipeline, records: Sequence[ImageRecord]) -> None:
    """Refuse to measure a model on images it has seen: fitted on, or calibrated on (held-out
    training images, a validation folder), under any name (another ``--seed`` or
    ``--train-fraction`` than the fit's, a copied dataset). Models without the record pass."""
    seen = getattr(pipeline, "seen_images_", None) or {}
    if not seen:
        return
    from stratad.data.io import content_digest

    digests = [content_digest(r.path) for r in records]
    for role, what in (
        ("fitted", "fitted this model"),
        ("calibration", "calibrated this model's thresholds"),
    ):
        used = set(seen.get(role, ()))
        overlap = [r.path for r, d in zip(records, digests, strict=True) if d in used]
        if overlap:
            raise StratadError(
                f"{len(overlap)} test images (e.g. {overlap[0]}) {what}: measure on images it has not "
                "seen (for a split of the same data, the --seed and --train-fraction of the fit)"
            )


def calibrate_on_good(
    pipeline: Pipeline,
    records: Sequence[ImageRecord],
    fpr: float,
    source: str,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """Image and pixel thresholds at a target false-positive rate from good images the detector was
    not fitted on (:func:`stratad.metrics.thresholds.quantile_threshold`). The pixel threshold is the
    same quantile of every pixel of their maps at the images' own sizes; pixels of one image are
    correlated, so its confidence is that of the images, not of the pixel count."""
    from stratad.metrics.thresholds import Calibration, normal_spread, quantile_threshold

    quantile_threshold(np.zeros(len(records)), fpr)  # too few images: refused before any scoring
    prediction = pipeline.predict(list(records), progress)
    image = quantile_threshold(prediction.image_scores, fpr)
    pixel_t = pixel_s = None
    if prediction.maps is not None:
        pixels = np.concatenate([prediction.map_at_original_size(i).ravel() for i in range(len(records))])
        pixel = quantile_threshold(pixels, fpr)
        pixel_t, pixel_s = pixel.threshold, normal_spread(pixels, pixel.threshold)
    return Calibration(
        method="fpr",
        image_threshold=image.threshold,
        image_scale=normal_spread(prediction.image_scores, image.threshold),
        pixel_threshold=pixel_t,
        pixel_scale=pixel_s,
        target_fpr=fpr,
        expected_fpr=image.expected_fpr,
        fpr_upper_95=image.fpr_upper_95,
        n_good=len(records),
        source=source,
    )


def calibrate_on_labelled(
    pipeline: Pipeline,
    records: Sequence[ImageRecord],
    source: str,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """F1-optimal image thresholds on labelled validation images, and F1-optimal pixel thresholds when
    every defective one has a mask (otherwise no pixel threshold)."""
    from stratad.metrics.thresholds import Calibration, f1_threshold, normal_spread

    labels = np.array([r.label for r in records], dtype=np.int64)
    if labels.size == 0 or labels.min() == labels.max():
        raise StratadError(f"{source}: an F1-optimal threshold needs both good and defective images")
    prediction = pipeline.predict(list(records), progress)
    scores = prediction.image_scores
    image_t, image_f1 = f1_threshold(labels, scores)
    pixel_t = pixel_s = pixel_f1 = None
    if prediction.maps is not None and all(r.mask_path is not None for r in records if r.label):
        # The masks every command draws hold pixels only in images judged defective (decisions.decide):
        # the pixels of images judged good are set below every score, so the F1 optimised and
        # stored is the F1 of those masks.
        judged = scores > image_t
        maps = [prediction.map_at_original_size(i) for i in range(len(records))]
        floor = np.finfo(maps[0].dtype).min
        maps = [m if judged[i] else np.full_like(m, floor) for i, m in enumerate(maps)]
        masks = [record_mask(r, prediction.original_sizes[i]) for i, r in enumerate(records)]
        values = np.concatenate([m.ravel() for m in maps])
        truth = np.concatenate([m.ravel() for m in masks])
        if values.size > F1_MAX_PIXELS:  # an evenly spaced sample: the sort stays within memory
            step = -(-values.size // F1_MAX_PIXELS)
            values, truth = values[::step], truth[::step]
        pixel_t, pixel_f1 = f1_threshold(truth, values)
        real = values > floor
        if real.any() and pixel_t < float(values[real].min()):  # "flag every pixel": say so in real units
            lowest = values[real].min()
            pixel_t = float(np.nextafter(lowest, lowest.dtype.type(-np.inf)))
        pixel_s = normal_spread(values[(truth == 0) & real], pixel_t)
    return Calibration(
        method="f1",
        image_threshold=image_t,
        image_scale=normal_spread(scores[labels == 0], image_t),
        pixel_threshold=pixel_t,
        pixel_scale=pixel_s,
        image_f1=image_f1,
        pixel_f1=pixel_f1,
        n_good=int((labels == 0).sum()),
        n_defective=int(labels.sum()),
        source=source,
    )


def rates_at_calibration(
    calibration: Any, records: Sequence[ImageRecord], prediction: Prediction, keep: Sequence[int]
) -> dict[str, Any]:
    """Observed false- and true-positive rates at the stored thresholds: images, and pixels of the
    records in ``keep`` (those with masks); the pixel FPR counts every defect-free pixel of every test
    image, as pixel AUROC does."""
    from stratad.metrics.thresholds import rates_at

    labels = np.array([r.label for r in records], dtype=np.int64)
    scores = prediction.image_scores
    result: dict[str, Any] = {
        "image_threshold": calibration.image_threshold,
        "image": rates_at(scores[labels == 0], scores[labels == 1], calibration.image_threshold),
    }
    if calibration.pixel_threshold is not None and prediction.maps is not None:
        t = calibration.pixel_threshold
        flagged_images = calibration.decide(scores)
        # counts over: every pixel over the threshold / only in images judged defective (the masks
        # predict writes); defect-free pixels, defect pixels, pixels of good images
        over = {"all": [0, 0, 0], "masks": [0, 0, 0]}
        n_good = n_bad = n_clean = any_flagged = 0
        for i in keep:
            anomaly_map = prediction.map_at_original_size(i)
            mask = record_mask(records[i], prediction.original_sizes[i])
            flagged = anomaly_map > t
            counts = [
                int(np.count_nonzero(flagged & ~mask)),
                int(np.count_nonzero(flagged & mask)),
                0 if records[i].label else int(np.count_nonzero(flagged)),
            ]
            for kind, gate in (("all", True), ("masks", bool(flagged_images[i]))):
                if gate:
                    over[kind] = [a + b for a, b in zip(over[kind], counts, strict=True)]
            n_bad += int(np.count_nonzero(mask))
            n_good += int(mask.size - np.count_nonzero(mask))
            if not records[i].label:
                n_clean += int(mask.size)
                any_flagged += bool(flagged.any())
        n_good_images = sum(1 for i in keep if not records[i].label)

        def rates(kind: str) -> dict[str, float | None]:
            fp, tp, clean = over[kind]
            return {
                "fpr": fp / n_good if n_good else None,
                "tpr": tp / n_bad if n_bad else None,
                # the false-positive rate on the good images alone
                "fpr_good_images": clean / n_clean if n_clean else None,
            }

        result["pixel_threshold"] = t
        result["pixel"] = {
            **rates("all"),
            "n_good": n_good,
            "n_defective": n_bad,
            # good images with any pixel over the threshold (their masks are empty when judged good)
            "good_images_with_flagged_pixels": any_flagged / n_good_images if n_good_images else None,
            # the masks predict writes: pixels over the threshold in images judged defective only
            "masks": rates("masks"),
        }
    return result
