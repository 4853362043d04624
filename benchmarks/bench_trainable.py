"""The CPU budget of the trained detectors: one training run on 209 MTD training images at 256 px with
EfficientNet-Lite0 (the detector's default nodes), then its real-test metrics and predict speed.

For each detector: the seconds of feature extraction, of each epoch (and their sum), the loss per
epoch, the MTD test metrics (image AUROC, pixel AUROC, AU-PRO@0.3, P_h) and images/s of
`Pipeline.predict`. ``--epochs`` trains a documented smaller budget (the official budget, e.g.
SimpleNet's 160 epochs, is the default when not given); the training time scales to the full one
(AST trains its teacher, then its student, for that many epochs each).

    .venv/bin/python benchmarks/bench_trainable.py --detectors simplenet --epochs 16 \\
        --out benchmarks/results/trainable_mtd.json
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

from stratad.data import load_dataset
from stratad.evaluation import evaluate_pipeline
from stratad.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
MTD = ROOT.parent / "shared" / "datasets" / "mtd"


def run(detector: str, epochs: int | None, n_train: int, extra: dict[str, str]) -> dict[str, Any]:
    split = load_dataset(MTD, "mtd")
    from stratad.detectors.base import detector_class

    defaults = detector_class(detector).config_class()
    unit = "epochs" if hasattr(defaults, "epochs") else "steps"  # what the budget counts
    params: dict[str, Any] = {**extra, **({} if epochs is None else {unit: epochs})}
    pipe = Pipeline(detector=detector, image_size=256, detector_params=params)
    pipe.prepare()
    train = pipe.training_features(split.train[:n_train])
    epoch_s: list[float] = []
    pipe.detector.progress = lambda epoch, total, loss, seconds: epoch_s.append(seconds)
    t0 = time.perf_counter()
    pipe.fit_features(train)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    metrics, _ = evaluate_pipeline(pipe, split.test)
    predict_s = time.perf_counter() - t1
    epochs_run = len(epoch_s)  # AST reports the teacher's epochs, then the student's
    per_epoch = train_s / max(epochs_run, 1)
    full = getattr(defaults, unit)  # the official budget
    scale = full / int(params.get(unit, full))  # the official budget over the one trained
    return {
        "detector": detector,
        "params": params,
        "nodes": pipe.config.nodes,
        "n_train": len(split.train[:n_train]),
        "extract_seconds": round(pipe.timings_["extract_s"], 2),
        "budget_unit": unit,
        "epochs": epochs_run,
        "train_seconds": round(train_s, 2),
        "seconds_per_epoch": round(per_epoch, 3),
        "official_epochs": full,
        "official_budget_seconds_estimated": round(train_s * scale, 1),
        "loss_first_last": [round(pipe.detector.losses_[0], 4), round(pipe.detector.losses_[-1], 4)],
        "image_auroc": metrics["image_auroc"],
        "pixel_auroc": metrics["pixel_auroc"],
        "aupro_30": metrics["aupro_30"],
        "p_h": metrics["p_h"],
        "evaluate_images_per_second": round(len(split.test) / predict_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--detectors", default="simplenet")
    parser.add_argument(
        "--epochs",
        type=int,
        help="train this many epochs, or steps for FastFlow (default: the official budget)",
    )
    parser.add_argument("--n-train", type=int, default=209)
    parser.add_argument("-p", "--param", action="append", default=[], help="detector option key=value")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "trainable_mtd.json")
    args = parser.parse_args()
    if not (MTD / "MT_Free").is_dir():
        sys.exit(f"needs the MTD dataset at {MTD}")
    rows = []
    for detector in args.detectors.split(","):
        row = run(detector, args.epochs, args.n_train, dict(p.split("=", 1) for p in args.param))
        print(json.dumps(row), flush=True)
        rows.append(row)
    payload = {"benchmark": "trainable_mtd", "cpu_count": os.cpu_count(), "image_size": 256, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
