"""Speed and memory of PatchCore fit / predict on MTD (EfficientNet-Lite0, 256 px, coreset 1000).

Writes one JSON file. Run from the repository root:

    .venv/bin/python benchmarks/bench_patchcore.py --out benchmarks/results/patchcore_mtd.json

The comparison point (measured on this 2-vCPU machine, same backbone, size and coreset): anomalib 2.7
PatchCore fits 209 images in ~245 s (coreset ~200 s) and predicts ~6 images/s.
"""

from __future__ import annotations

from stratad.runtime import configure_runtime

configure_runtime()  # before torch loads: passive OpenMP waiting, freed-memory reuse

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from stratad.data import load_dataset
from stratad.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
MTD = ROOT.parent / "shared" / "datasets" / "mtd"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(nodes: list[str], n_train: int, n_predict: int, coreset: int, image_size: int) -> dict:
    split = load_dataset(MTD, "mtd")
    train = split.train[:n_train]
    test = split.test[:n_predict]
    pipe = Pipeline(
        nodes=nodes, detector="patchcore", image_size=image_size, detector_params={"coreset_size": coreset}
    )
    pipe.prepare()
    # Warm-up (first-call allocations, page cache of the images) is not part of either timing.
    pipe.extract(train[:4])
    t0 = time.perf_counter()
    pipe.fit(train)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    pipe.predict(test)
    predict_s = time.perf_counter() - t1
    return {
        "nodes": pipe.config.nodes,
        "n_train": len(train),
        "fit_seconds": round(fit_s, 2),
        "fit_extract_seconds": round(pipe.timings_["extract_s"], 2),
        "fit_detector_seconds": round(pipe.timings_["detector_fit_s"], 2),
        "n_predict": len(test),
        "predict_images_per_second": round(len(test) / predict_s, 2),
        "memory_bank": list(pipe.detector.state_dict()["memory_bank"].shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "patchcore_mtd.json")
    parser.add_argument("--nodes", default="blocks.4;blocks.2,blocks.4", help="';'-separated node sets")
    parser.add_argument("--n-train", type=int, default=209)
    parser.add_argument("--n-predict", type=int, default=200)
    parser.add_argument("--coreset", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    if not (MTD / "MT_Free").is_dir():
        sys.exit(f"benchmark needs the MTD dataset at {MTD}")
    results = [
        run(s.split(","), args.n_train, args.n_predict, args.coreset, args.image_size)
        for s in args.nodes.split(";")
    ]
    payload = {
        "benchmark": "patchcore_mtd",
        "backbone": "efficientnet_lite0",
        "image_size": args.image_size,
        "coreset_size": args.coreset,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "runs": results,
        "anomalib_reference": {"fit_seconds_209_images": 245, "predict_images_per_second": 6},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
