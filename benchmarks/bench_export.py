"""ONNX export on MTD: parity with the pipeline on real images, and onnxruntime vs torch throughput.

For every exportable detector (EfficientNet-Lite0, 256 px, fitted on 209 MTD training images):
the largest relative difference of scores and maps between the pipeline and onnxruntime on 200 real
test images, and images/s (preloaded tensors, reading excluded) of
- the pipeline's scoring (each image alone, two at a time with one thread each: batch-independent),
- onnxruntime, one image per call and batches of 16 (2 intra-op threads).
Writes JSON:

    .venv/bin/python benchmarks/bench_export.py --out benchmarks/results/export_mtd.json
"""

from __future__ import annotations

from stratad.runtime import configure_runtime

configure_runtime()  # before torch loads: passive OpenMP waiting, freed-memory reuse

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from stratad.data import load_dataset
from stratad.inference import export_onnx, max_relative_difference, onnx_predict, onnx_session
from stratad.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
MTD = ROOT.parent / "shared" / "datasets" / "mtd"
DETECTORS = {
    "patchcore": {"coreset_size": 1000},
    "padim": {},
    "gaussian": {},
    "dn2": {},
    "spade": {},
}


def rate(run: object, count: int, repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    return count / best


def bench(name: str, params: dict, split: object, n_train: int, n_test: int) -> dict:
    pipe = Pipeline(detector=name, detector_params=params).fit(split.train[:n_train])  # type: ignore[attr-defined]
    images = torch.cat(
        [b for b, _ in pipe._batches(split.test[:: max(1, len(split.test) // n_test)][:n_test])]
    )  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        t0 = time.perf_counter()
        export_onnx(pipe, path)
        export_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 2**20
        session = onnx_session(path)
        scores, maps = pipe.score_images(images)
        onnx_scores, onnx_maps = onnx_predict(session, images)
        row = {
            "detector": name,
            "nodes": pipe.config.nodes,
            "n_images": len(images),
            "export_seconds": round(export_s, 2),
            "onnx_megabytes": round(size_mb, 1),
            "parity_scores": max_relative_difference(scores, onnx_scores),
            "parity_maps": None if maps is None else max_relative_difference(maps, onnx_maps),  # type: ignore[arg-type]
            "torch_pipeline_images_per_s": round(rate(lambda: pipe.score_images(images), len(images)), 1),
            "onnx_one_image_per_call_images_per_s": round(
                rate(
                    lambda: [onnx_predict(session, images[i : i + 1]) for i in range(len(images))],
                    len(images),
                ),
                1,
            ),
            "onnx_batch16_images_per_s": round(
                rate(
                    lambda: [onnx_predict(session, images[i : i + 16]) for i in range(0, len(images), 16)],
                    len(images),
                ),
                1,
            ),
        }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export_mtd.json")
    parser.add_argument("--n-train", type=int, default=209)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--only", default="", help="comma-separated detector names")
    args = parser.parse_args()
    if not (MTD / "MT_Free").is_dir():
        sys.exit(f"needs the MTD dataset at {MTD}")
    split = load_dataset(MTD, "mtd")
    names = [n for n in DETECTORS if not args.only or n in args.only.split(",")]
    rows = [bench(n, DETECTORS[n], split, args.n_train, args.n_test) for n in names]
    if args.out.is_file():  # keep the rows of detectors not run this time
        done = {r["detector"] for r in rows}
        rows = [r for r in json.loads(args.out.read_text())["results"] if r["detector"] not in done] + rows
        rows.sort(key=lambda r: list(DETECTORS).index(r["detector"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "export_mtd",
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "results": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
