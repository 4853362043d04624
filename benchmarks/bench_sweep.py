"""Cost of a full feature-selection sweep vs one single-node PatchCore fit, on the MTD training split.

Target (issue 4): every graph node of EfficientNet-Lite0 scored with synthetic defects in at most
5x the wall time of fitting PatchCore on one node. Writes JSON:

    .venv/bin/python benchmarks/bench_sweep.py --work runs/sweep_bench --repeat 3 \\
        --out benchmarks/results/sweep_mtd.json

With ``--repeat N`` both timings are taken N times (alternating) and the medians are reported: wall
times on the shared 2-vCPU machine vary by about 10% from run to run.
"""

from __future__ import annotations

from stratad.runtime import configure_runtime

configure_runtime()  # before torch loads: passive OpenMP waiting, freed-memory reuse

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

from stratad.backbones import build_backbone, relative_receptive_field
from stratad.data import load_dataset
from stratad.pipeline import Pipeline
from stratad.selection import SweepConfig, select_features

ROOT = Path(__file__).resolve().parents[1]
MTD = ROOT.parent / "shared" / "datasets" / "mtd"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work", type=Path, required=True, help="sweep folder (must not hold a finished sweep)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sweep_mtd.json")
    parser.add_argument("--single-node", default="blocks.4")
    parser.add_argument("--defects", default="nsa")
    parser.add_argument("--max-grid", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("-p", "--param", action="append", default=[], help="PatchCore option key=value")
    parser.add_argument(
        "--repeat", type=int, default=1, help="time both N times (sweeps in --work/run1..N); report medians"
    )
    args = parser.parse_args()
    if args.repeat < 1:
        sys.exit("--repeat must be >= 1")
    if not (MTD / "MT_Free").is_dir():
        sys.exit(f"needs the MTD dataset at {MTD}")
    works = [args.work] if args.repeat == 1 else [args.work / f"run{r}" for r in range(1, args.repeat + 1)]
    for work in works:
        if (work / "nodes.csv").exists():
            sys.exit(f"{work} already holds sweep results; give an empty --work folder for a timing")
    split = load_dataset(MTD, "mtd")
    params = {"coreset_size": 1000, **dict(p.split("=", 1) for p in args.param)}
    single = Pipeline(nodes=[args.single_node], detector="patchcore", image_size=256, detector_params=params)
    single.prepare()
    cfg = SweepConfig(nodes=["all"], detector_params=params, max_grid=args.max_grid, workers=args.workers)
    single_runs, sweep_runs, rf_runs = [], [], []
    for work in works:
        t0 = time.perf_counter()
        single.fit(split.train)
        single_runs.append(round(time.perf_counter() - t0, 2))
        t1 = time.perf_counter()
        rrf = relative_receptive_field(build_backbone("efficientnet_lite0"), ["all"], image_size=256)
        rf_runs.append(round(time.perf_counter() - t1, 2))
        result = select_features(split.train, cfg, work, defects=args.defects, relative_rf=rrf)
        sweep_runs.append(round(time.perf_counter() - t1, 2))
    single_s, sweep_s = statistics.median(single_runs), statistics.median(sweep_runs)
    rows = result.table
    payload = {
        "benchmark": "sweep_mtd",
        "single_node": args.single_node,
        "single_node_fit_seconds": round(single_s, 2),
        "sweep_seconds": round(sweep_s, 2),
        "receptive_field_seconds": round(statistics.median(rf_runs), 2),
        "ratio": round(sweep_s / single_s, 2),
        "runs": {
            "single_node_fit_seconds": single_runs,
            "sweep_seconds": sweep_runs,
            "receptive_field_seconds": rf_runs,
        },
        "n_nodes": len(rows),
        "n_scored": sum(1 for r in rows if not r.same_as),
        "selected": result.node,
        "settings": {
            "defects": args.defects,
            "max_grid": args.max_grid,
            "workers": args.workers,
            "params": params,
        },
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
