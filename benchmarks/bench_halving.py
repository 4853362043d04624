"""Successive halving against the exhaustive sweep: wall time and fidelity, on MTD, per seed.

For each seed: one single-node PatchCore fit on all MTD training images (the yardstick), the
exhaustive `select` sweep of every EfficientNet-Lite0 node and the default pair, and `select
--halving` on the same split and defects. Reported per seed and as medians: the halving sweep's
wall time over the single-node fit (target: at most 3x), the exhaustive one's (the sweep alone:
every node scored; the whole `select` adds the split, the synthetic defects and the bootstrap test
against the default, also reported), whether both select
the same candidate, how many of the exhaustive top 10 reach halving's last round, and the Spearman
correlation, over the exhaustive top 10, of the first (cheapest) round's scores with the exhaustive
ones. The last round's rows equal the exhaustive rows of the same nodes (tested), so a node that
reaches it is ranked exactly.

    .venv/bin/python benchmarks/bench_halving.py --work runs/halving --out benchmarks/results/halving_mtd.json
"""

from __future__ import annotations

from stratad.runtime import configure_runtime

configure_runtime()  # before torch loads: passive OpenMP waiting, freed-memory reuse

import argparse
import csv
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from scipy.stats import spearmanr

from stratad.data import load_dataset
from stratad.pipeline import Pipeline
from stratad.selection import SweepConfig, select_features
from stratad.selection import halving as halving_module
from stratad.selection import select as select_module

ROOT = Path(__file__).resolve().parents[1]
MTD = ROOT.parent / "shared" / "datasets" / "mtd"


def _rows(path: Path) -> dict[str, float]:
    with open(path, newline="") as handle:
        return {r["node"]: float(r["p_h"]) for r in csv.DictReader(handle) if not r["same_as"]}


SWEEP_SECONDS: list[float] = []


def _timed(function):  # type: ignore[no-untyped-def]
    """``function`` that also records its wall time in SWEEP_SECONDS."""

    def run(*args, **kwargs):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            SWEEP_SECONDS.append(time.perf_counter() - t0)

    return run


# The sweep alone (every node scored), apart from the rest of `select` (split, synthetic defects,
# the bootstrap test against the default).
select_module.run_sweep = _timed(select_module.run_sweep)
select_module.halving_sweep = _timed(select_module.halving_sweep)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied first)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "halving_mtd.json")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--defects", default="nsa")
    parser.add_argument("--max-grid", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--single-node", default="blocks.4")
    parser.add_argument(
        "--rounds", type=int, default=halving_module.MAX_ROUNDS, help="halving rounds at most"
    )
    args = parser.parse_args()
    if not (MTD / "MT_Free").is_dir():
        sys.exit(f"needs the MTD dataset at {MTD}")
    shutil.rmtree(args.work, ignore_errors=True)
    halving_module.MAX_ROUNDS = args.rounds
    train = load_dataset(MTD, "mtd").train
    params = {"coreset_size": 1000}
    per_seed = []
    for seed in (int(s) for s in args.seeds.split(",")):
        single = Pipeline(nodes=[args.single_node], image_size=256, detector_params=params, seed=seed)
        single.prepare()
        t0 = time.perf_counter()
        single.fit(train)
        single_s = time.perf_counter() - t0
        cfg = SweepConfig(
            nodes=["all"], detector_params=params, max_grid=args.max_grid, workers=args.workers, seed=seed,
            with_default=True,
        )  # fmt: skip
        timings, results = {}, {}
        for mode in ("exhaustive", "halving"):
            out = args.work / f"seed{seed}" / mode
            SWEEP_SECONDS.clear()
            t0 = time.perf_counter()
            results[mode] = select_features(
                train, cfg, out, defects=args.defects, halving=mode == "halving",
                defect_params={"category_type": "texture"} if args.defects == "nsa" else None,
            )  # fmt: skip
            timings[mode] = time.perf_counter() - t0
            timings[f"{mode}_sweep"] = sum(SWEEP_SECONDS)
        exhaustive = _rows(args.work / f"seed{seed}" / "exhaustive" / "nodes.csv")
        top10 = sorted(exhaustive, key=lambda n: -exhaustive[n])[:10]
        rounds = sorted(
            (args.work / f"seed{seed}" / "halving" / "rounds").iterdir(), key=lambda p: int(p.name)
        )
        first, last = _rows(rounds[0] / "nodes.csv"), _rows(rounds[-1] / "nodes.csv")
        shared = [n for n in top10 if n in first]
        rho = spearmanr([exhaustive[n] for n in shared], [first[n] for n in shared]).statistic
        row = {
            "seed": seed,
            "single_node_fit_seconds": round(single_s, 2),
            "exhaustive_sweep_seconds": round(timings["exhaustive_sweep"], 2),
            "halving_sweep_seconds": round(timings["halving_sweep"], 2),
            "exhaustive_sweep_ratio": round(timings["exhaustive_sweep"] / single_s, 2),
            "halving_sweep_ratio": round(timings["halving_sweep"] / single_s, 2),
            "exhaustive_select_seconds": round(timings["exhaustive"], 2),
            "halving_select_seconds": round(timings["halving"], 2),
            "selected_exhaustive": results["exhaustive"].node,
            "selected_halving": results["halving"].node,
            "same_selection": results["exhaustive"].node == results["halving"].node,
            "top10_in_last_round": sum(n in last for n in top10),
            "spearman_first_round_vs_exhaustive_top10": round(float(rho), 4),
            "rounds": len(rounds),
        }
        print(json.dumps(row), flush=True)
        per_seed.append(row)
    payload = {
        "benchmark": "halving_mtd",
        "settings": {
            "defects": args.defects,
            "max_grid": args.max_grid,
            "workers": args.workers,
            "max_rounds": args.rounds,
            "params": params,
        },
        "median_halving_sweep_ratio": statistics.median(r["halving_sweep_ratio"] for r in per_seed),
        "median_exhaustive_sweep_ratio": statistics.median(r["exhaustive_sweep_ratio"] for r in per_seed),
        "median_halving_select_seconds": statistics.median(r["halving_select_seconds"] for r in per_seed),
        "median_exhaustive_select_seconds": statistics.median(
            r["exhaustive_select_seconds"] for r in per_seed
        ),
        "same_selection": sum(r["same_selection"] for r in per_seed),
        "seeds": per_seed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
