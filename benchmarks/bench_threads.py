"""Thread settings on this machine: OpenMP wait policy x threads (torch, faiss, NumPy BLAS), hot paths.

Each setting runs in a fresh process (the policy is read when libgomp loads). Writes JSON:

    .venv/bin/python benchmarks/bench_threads.py --out benchmarks/results/threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
import stratad, torch, numpy as np
from stratad.backbones import NodeExtractor, build_backbone
from stratad.detectors.knn import NearestNeighbours
from stratad.detectors.coreset import greedy_coreset
threads = int(sys.argv[1])
torch.set_num_threads(threads)
import faiss
faiss.omp_set_num_threads(threads)
from threadpoolctl import threadpool_limits
threadpool_limits(threads, user_api="blas")  # NumPy's BLAS runs the coreset loop
ext = NodeExtractor(build_backbone("efficientnet_lite0"), ["blocks.2", "blocks.4"])
x = torch.rand(16, 3, 256, 256)
ext(x)
t = time.perf_counter()
for _ in range(4):
    ext(x)
extract = 64 / (time.perf_counter() - t)
t = time.perf_counter()
for i in range(32):  # one image per forward, as predict runs (a score independent of batch-mates)
    ext(x[i % 16 : i % 16 + 1])
extract_single = 32 / (time.perf_counter() - t)
# What predict does: each image alone with one intra-op thread, `threads` images at a time.
from concurrent.futures import ThreadPoolExecutor
torch.set_num_threads(1)
with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
    list(pool.map(lambda i: ext(x[i : i + 1]), range(threads)))
    t = time.perf_counter()
    list(pool.map(lambda i: ext(x[i % 16 : i % 16 + 1]), range(32)))
    extract_pool = 32 / (time.perf_counter() - t)
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
bank = torch.randn(1000, 152, generator=g)
queries = torch.randn(16 * 1024, 152, generator=g)
nn_index = NearestNeighbours().fit(bank)
nn_index.search(queries[:16])
t = time.perf_counter()
for i in range(0, len(queries), 1024):  # one image's patches per call, as predict does
    nn_index.search(queries[i : i + 1024])
knn_ms = (time.perf_counter() - t) / 16 * 1000
t = time.perf_counter()
for i in range(200):  # tiny searches: where a spinning thread pool costs the most
    nn_index.search(queries[i : i + 1])
knn_tiny_ms = (time.perf_counter() - t) / 200 * 1000
feats = torch.randn(100_000, 152, generator=g)
t = time.perf_counter()
greedy_coreset(feats, 1000, 128)
coreset_s = time.perf_counter() - t
print(json.dumps({"extract_images_per_s": round(extract, 2),
                  "extract_one_image_per_pass_images_per_s": round(extract_single, 2),
                  "extract_one_image_per_pass_one_thread_each_images_per_s": round(extract_pool, 2),
                  "knn_ms_per_image": round(knn_ms, 2),
                  "knn_ms_per_single_query": round(knn_tiny_ms, 3), "coreset_100k_s": round(coreset_s, 2)}))
"""


#: (OMP_WAIT_POLICY, GOMP_SPINCOUNT): libgomp sleeps at once when passive, spins without bound when
#: active; a spin count bounds the busy wait (iterations, ~1 ns each) before a thread sleeps.
POLICIES = (("PASSIVE", None), ("PASSIVE", "10000"), ("PASSIVE", "100000"), ("ACTIVE", None))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "threads.json")
    args = parser.parse_args()
    results = []
    for busy in (False, True):
        # "busy": another process keeps one core loaded, as a second sweep worker or any other job does.
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            for policy, spin in POLICIES:
                for threads in (1, 2):
                    env = {**os.environ, "OMP_WAIT_POLICY": policy}
                    env.pop("GOMP_SPINCOUNT", None)
                    if spin is not None:
                        env["GOMP_SPINCOUNT"] = spin
                    proc = subprocess.run(
                        [sys.executable, "-c", CHILD, str(threads)],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    row = {
                        "other_core_busy": busy,
                        "omp_wait_policy": policy,
                        "gomp_spincount": spin,
                        "threads": threads,
                        **json.loads(proc.stdout.strip().splitlines()[-1]),
                    }
                    print(json.dumps(row), flush=True)
                    results.append(row)
        finally:
            if hog is not None:
                hog.kill()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"benchmark": "threads", "cpu_count": os.cpu_count(), "results": results}, indent=2)
    )


if __name__ == "__main__":
    main()
