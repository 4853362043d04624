"""A short dense pretraining on this CPU and what it does to localisation on MTD.

EfficientNet-Lite0 starts from its ImageNet weights and is pretrained with PixPro and with DS2 on the
MTD training split (the evaluation's own training images; no test image is seen), ``--epochs`` epochs
of 224 px views, batches of 16. Then, for the ImageNet weights and each pretrained file: PatchCore
(default nodes, coreset 1000) and the DS2 paper's protocol, patch GDE on 32 x 32 patches at stride 4
(fitted on the first ``--gde-train`` training images: it encodes ~3,250 patches per image), both
evaluated on the MTD test split (pixel AUROC, AU-PRO@0.3, image AUROC).

    .venv/bin/python benchmarks/pretrain_mtd.py --work runs/pretrain \\
        --out benchmarks/results/pretrain_mtd.json
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
from stratad.workflows import pretrain_to_file

ROOT = Path(__file__).resolve().parents[1]
MTD = ROOT.parent / "shared" / "datasets" / "mtd"
KEYS = ("image_auroc", "pixel_auroc", "aupro_30", "p_h")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "pretrain")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--methods", default="pixpro,ds2")
    parser.add_argument("--gde-train", type=int, default=115)
    parser.add_argument("--lr", type=float, default=0.05, help="the pretraining's starting learning rate")
    parser.add_argument(
        "--no-imagenet", action="store_true", help="skip the ImageNet rows (measured in an earlier run)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pretrain_mtd.json")
    args = parser.parse_args()
    if not (MTD / "MT_Free").is_dir():
        sys.exit(f"needs the MTD dataset at {MTD}")
    split = load_dataset(MTD, "mtd")
    payload: dict[str, Any] = {
        "benchmark": "pretrain_mtd",
        "epochs": args.epochs,
        "lr": args.lr,
        "pretraining": {},
        "evaluation": {},
    }
    weights = {} if args.no_imagenet else {"imagenet": "imagenet"}
    for method in args.methods.split(","):
        out = args.work / (
            f"{method}.safetensors" if args.lr == 0.05 else f"{method}_lr{args.lr:g}.safetensors"
        )
        if not out.is_file():  # (a finished file is reused: its log is in its metadata)
            params = {
                "method": method,
                "epochs": str(args.epochs),
                "image_size": "224",
                "batch_size": "16",
                "lr": str(args.lr),
            }
            pretrain_to_file(MTD, out, params=params)
        from safetensors import safe_open

        with safe_open(str(out), "pt") as handle:
            log = json.loads((handle.metadata() or {})["stratad"])
        payload["pretraining"][method] = {
            "images": log["images"],
            "losses": [round(v, 4) for v in log["losses"]],
            "positive_pairs_per_image": [round(v, 2) for v in log["positive_pairs_per_image"]],
            "epoch_seconds": [round(v, 1) for v in log["epoch_seconds"]],
        }
        print(json.dumps({"pretrain": method, **payload["pretraining"][method]}), flush=True)
        weights[method] = str(out)
    for label, source in weights.items():
        rows = {}
        for detector, extra, train in (
            ("patchcore", {}, split.train),
            ("gde", {"patch_size": 32, "patch_stride": 4}, split.train[: args.gde_train]),
        ):
            t0 = time.perf_counter()
            pipe = Pipeline(detector=detector, image_size=256, weights=source, **extra).fit(train)  # type: ignore[arg-type]
            metrics, _ = evaluate_pipeline(pipe, split.test)
            rows[detector] = {k: round(metrics[k], 4) for k in KEYS} | {
                "seconds": round(time.perf_counter() - t0, 1)
            }
            print(json.dumps({"weights": label, detector: rows[detector]}), flush=True)
        payload["evaluation"][label] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
