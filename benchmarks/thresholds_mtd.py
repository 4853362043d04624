"""Thresholds from good images only, on MTD: stratad's held-out quantile against anomalib's approach.

PatchCore (EfficientNet-Lite0 at 256 px, default nodes blocks.2 + blocks.4, coreset 1000) and PaDiM
(its default nodes) are each fitted
with ``fit --calibrate fpr=R``: ``--holdout`` of the 571 good training images is held out, the
detector is fitted on the rest, and the image and pixel thresholds are the distribution-free
quantiles of the held-out images' scores (:func:`stratad.metrics.thresholds.quantile_threshold`).
Then, on the MTD test split (never seen before), the observed false- and true-positive rates at the
stored thresholds, images and pixels.

For comparison, anomalib's approach with good images only: its F1-adaptive threshold on a validation
set without anomalies falls back to the highest normal score, and its min-max normalisation maps
that threshold to 0.5 (so "normalised > 0.5" is the same decision). Measured with the validation
scores taken (a) from the training images the model was fitted on (in-sample, what a user without
a held-out set gets) and (b) from the held-out good images.

    .venv/bin/python benchmarks/thresholds_mtd.py --work runs/thresholds \\
        --out benchmarks/results/thresholds_mtd.json
"""

from __future__ import annotations

from stratad.runtime import configure_runtime

configure_runtime()  # before torch loads: passive OpenMP waiting, freed-memory reuse

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from stratad.data.datasets import DataSource, seeded_split
from stratad.evaluation import evaluate_pipeline, rates_at_calibration
from stratad.metrics.thresholds import Calibration
from stratad.pipeline import Pipeline
from stratad.workflows import fit_to_file

ROOT = Path(__file__).resolve().parents[1]
MTD = ROOT.parent / "shared" / "datasets" / "mtd"
DETECTOR_PARAMS: dict[str, dict[str, Any]] = {"patchcore": {"coreset_size": 1000}}


def max_thresholds(pipe: Pipeline, records: list[Any], source: str) -> tuple[Calibration, dict[str, Any]]:
    """anomalib's fallback without anomalous validation data: the highest normal image and pixel score."""
    prediction = pipe.predict(records)
    pixels = np.concatenate([prediction.map_at_original_size(i).ravel() for i in range(len(records))])
    image_max, pixel_max = float(prediction.image_scores.max()), float(pixels.max())
    cal = Calibration(
        method="fpr", image_threshold=image_max, image_scale=1.0, pixel_threshold=pixel_max, pixel_scale=1.0
    )
    spans = {
        "source": source,
        "n_images": len(records),
        "image_threshold": image_max,
        "image_min_max": [float(prediction.image_scores.min()), image_max],
        "pixel_threshold": pixel_max,
        "pixel_min_max": [float(pixels.min()), pixel_max],
    }
    return cal, spans


def defect_free_rates(records: list[Any], prediction: Any, threshold: float) -> dict[str, float]:
    """Where the pixel false positives lie: the rate over the defect-free pixels of defective images,
    and over those farther than 16 px from an annotated defect."""
    import cv2

    from stratad.data.datasets import record_mask

    over = n = far_over = far_n = 0
    for i, record in enumerate(records):
        if not record.label:
            continue
        mask = record_mask(record, prediction.original_sizes[i])
        flagged = prediction.map_at_original_size(i) > threshold
        near = cv2.dilate(mask.astype(np.uint8), np.ones((33, 33), np.uint8)) > 0
        over += int((flagged & ~mask).sum())
        n += int((~mask).sum())
        far_over += int((flagged & ~near).sum())
        far_n += int((~near).sum())
    return {"fpr": over / n, "fpr_beyond_16px": far_over / far_n}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "thresholds")
    parser.add_argument("--fpr", type=float, default=0.01)
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--detectors", default="patchcore,padim")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "thresholds_mtd.json")
    args = parser.parse_args()
    if not (MTD / "MT_Free").is_dir():
        sys.exit(f"needs the MTD dataset at {MTD}")
    args.work.mkdir(parents=True, exist_ok=True)
    source = DataSource(root=MTD, kind="mtd")  # type: ignore[arg-type]
    split = source.load()
    by_path = {r.path: r for r in split.train}
    kept, held = seeded_split([r.path for r in split.train], 1.0 - args.holdout, source.seed)
    fit_records, held_records = [by_path[p] for p in kept], [by_path[p] for p in held]
    detectors: dict[str, Any] = {}
    for detector in args.detectors.split(","):
        model = args.work / f"{detector}_calibrated.stratad"
        settings = {"detector": detector, "detector_params": DETECTOR_PARAMS.get(detector, {})}
        t0 = time.perf_counter()
        fitted = fit_to_file(source, settings, model, calibrate=args.fpr, holdout=args.holdout)
        fit_s = time.perf_counter() - t0
        pipe = Pipeline.load(model)
        cal = pipe.calibration_
        assert cal is not None
        metrics, prediction = evaluate_pipeline(pipe, split.test)
        keep = list(range(len(split.test)))
        rows: dict[str, Any] = {
            "stratad_quantile": {
                "thresholds": cal.to_dict(),
                "observed_on_test": metrics["at_threshold"],
                "defective_images_defect_free_pixels": defect_free_rates(
                    split.test, prediction, cal.pixel_threshold
                ),
            }
        }
        for name, records, what in (
            ("anomalib_in_sample", fit_records, "the training images the model was fitted on"),
            ("anomalib_held_out", held_records, "the held-out good training images"),
        ):
            other, spans = max_thresholds(pipe, records, what)
            observed = rates_at_calibration(other, split.test, prediction, keep)
            rows[name] = {"thresholds": spans, "observed_on_test": observed}
        detectors[detector] = {
            "model": pipe.describe() | {"calibration": None},
            "n_fitted": fitted.n_fitted,
            "fit_and_calibrate_seconds": round(fit_s, 1),
            "threshold_free": {
                k: metrics[k] for k in ("image_auroc", "pixel_auroc", "aupro_30", "p_h", "f1_max")
            },
            "methods": rows,
        }
        for name, row in rows.items():
            o = row["observed_on_test"]
            print(
                f"{detector:10s} {name:20s} image FPR {o['image']['fpr']:.4f} TPR {o['image']['tpr']:.4f} | "
                f"pixel FPR {o['pixel']['fpr']:.5f} (good images {o['pixel']['fpr_good_images']:.5f}) "
                f"TPR {o['pixel']['tpr']:.4f} | masks FPR {o['pixel']['masks']['fpr']:.5f} "
                f"TPR {o['pixel']['masks']['tpr']:.4f}",
                flush=True,
            )
        spread = rows["stratad_quantile"]["defective_images_defect_free_pixels"]
        print(f"{detector:10s} defect-free pixels of defective images: {spread}", flush=True)
    payload = {
        "benchmark": "thresholds_mtd",
        "dataset": split.describe(),
        "target_fpr": args.fpr,
        "holdout": args.holdout,
        "detectors": detectors,
        "machine_load_1min": os.getloadavg()[0],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
