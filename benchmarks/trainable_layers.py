"""One trained detector on single nodes of EfficientNet-Lite0 on MTD: the per-layer table of Fig. 3 of
the extractor study (Heckler, König, Bergmann). Each node gets its own training run on the MTD training
split (256 px, the detector's default budget unless -p says otherwise; ``--n-train N``: its first N
images) and is evaluated on the real test split; the JSON holds every row and the spread (best -
worst) of image AUROC and P_h.

    .venv/bin/python benchmarks/trainable_layers.py --detector fastflow \\
        --nodes blocks.1,blocks.2,blocks.3,blocks.4,blocks.5 --out benchmarks/results/fastflow_layers_mtd.json
"""

from __future__ import annotations

from stratad.runtime import configure_runtime

configure_runtime()  # before torch loads: passive OpenMP waiting, freed-memory reuse

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from stratad.data import load_dataset
from stratad.evaluation import evaluate_pipeline
from stratad.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
MTD = ROOT.parent / "shared" / "datasets" / "mtd"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--detector", default="fastflow")
    parser.add_argument("--nodes", default="blocks.1,blocks.2,blocks.3,blocks.4,blocks.5")
    parser.add_argument("-p", "--param", action="append", default=[], help="detector option key=value")
    parser.add_argument("--n-train", type=int, help="the first N training images (default: all)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not (MTD / "MT_Free").is_dir():
        sys.exit(f"needs the MTD dataset at {MTD}")
    split = load_dataset(MTD, "mtd")
    train = split.train[: args.n_train]
    params: dict[str, Any] = dict(p.split("=", 1) for p in args.param)
    rows = []
    for node in args.nodes.split(","):
        pipe = Pipeline(nodes=[node], detector=args.detector, image_size=256, detector_params=params)
        t0 = time.perf_counter()
        pipe.fit(train)
        fit_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        metrics, _ = evaluate_pipeline(pipe, split.test)
        row = {
            "node": pipe.config.nodes[0],
            "image_auroc": metrics["image_auroc"],
            "pixel_auroc": metrics["pixel_auroc"],
            "aupro_30": metrics["aupro_30"],
            "p_h": metrics["p_h"],
            "train_seconds": round(pipe.timings_["detector_fit_s"], 1),
            "fit_seconds": round(fit_s, 1),
            "predict_images_per_second": round(len(split.test) / (time.perf_counter() - t1), 1),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    spread = {k: max(r[k] for r in rows) - min(r[k] for r in rows) for k in ("image_auroc", "p_h")}
    payload = {
        "detector": args.detector,
        "params": params,
        "n_train": len(train),
        "rows": rows,
        "spread_best_minus_worst": spread,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(json.dumps(spread))


if __name__ == "__main__":
    main()
