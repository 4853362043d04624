"""Does the fast sweep keep the node ranking? MTD, EfficientNet-Lite0, NSA, seed 0.

Runs `select_features` over all 149 spatial nodes with PatchCore (coreset 1000) five ways: the
exact 128-d coreset projection (coreset seed 0), the same with coreset seed 1 (the noise floor of
the ranking itself), 64-d, 128-d with the fast sweep's pixel metrics on a stride-2 lattice, and the
sweep default (PatchCore's ``sweep_params``, 32-d, plus the lattice). Each is
compared with the first by the Spearman correlation of per-node synthetic P_h, the mean absolute
P_h difference, and the selected node. Sweep folders in --work are resumable. Writes JSON:

    .venv/bin/python benchmarks/sweep_fidelity.py --work runs/fidelity \\
        --out benchmarks/results/sweep_fidelity.json
"""

from __future__ import annotations

from stratad.runtime import configure_runtime

configure_runtime()  # before torch loads: passive OpenMP waiting, freed-memory reuse

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from scipy.stats import spearmanr

from stratad.data import load_dataset
from stratad.selection import SweepConfig, select_features
from stratad.selection.sweep import pooled_exact

ROOT = Path(__file__).resolve().parents[1]
MTD = ROOT.parent / "shared" / "datasets" / "mtd"

VARIANTS: dict[str, dict[str, Any]] = {
    "p128_seed0": {"exact": True, "params": {}},
    "p128_seed1": {"exact": True, "params": {"seed": 1}},
    "p64": {"exact": True, "params": {"projection_dim": 64}},
    # The fast sweep's pixel lattice alone: 128-d coreset (the user's option wins), stride-2 metrics.
    "p128_lattice2": {"exact": False, "params": {"projection_dim": 128}},
    "sweep_default": {"exact": False, "params": {}},
}


def mean_abs(a: list[float], b: list[float]) -> float:
    return statistics.fmean(abs(x - y) for x, y in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "fidelity")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sweep_fidelity.json")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not (MTD / "MT_Free").is_dir():
        sys.exit(f"needs the MTD dataset at {MTD}")
    split = load_dataset(MTD, "mtd")
    tables: dict[str, dict[str, dict[str, Any]]] = {}
    selected: dict[str, str] = {}
    seconds: dict[str, float] = {}
    resumed: dict[str, bool] = {}
    for name, variant in VARIANTS.items():
        cfg = SweepConfig(
            nodes=["all"],
            detector_params={"coreset_size": 1000, **variant["params"]},
            max_grid=16,
            workers=args.workers,
        )
        if variant["exact"]:  # exact options and every pixel, on the same pooled maps
            cfg = pooled_exact(cfg)
        resumed[name] = (args.work / name / "nodes.csv").exists()
        t0 = time.perf_counter()
        result = select_features(split.train, cfg, args.work / name, defects="nsa")
        seconds[name] = round(time.perf_counter() - t0, 1)
        tables[name] = {r.node: r for r in result.table}
        selected[name] = result.node
    reference = tables["p128_seed0"]
    nodes = [n for n, r in reference.items() if not r.same_as]
    payload: dict[str, Any] = {"benchmark": "sweep_fidelity", "n_nodes": len(nodes), "variants": {}}
    for name, table in tables.items():
        a = [reference[n].value("p_h") for n in nodes]
        b = [table[n].value("p_h") for n in nodes]
        ranked = sorted(nodes, key=lambda n, t=table: -t[n].value("p_h"))  # type: ignore[misc]
        payload["variants"][name] = {
            "settings": VARIANTS[name],
            "spearman_vs_p128_seed0": round(float(spearmanr(a, b).statistic), 4),
            "mean_abs_p_h_difference": round(mean_abs(a, b), 4),
            "max_abs_p_h_difference": round(max(abs(x - y) for x, y in zip(a, b, strict=True)), 4),
            "selected": selected[name],
            "top5": ranked[:5],
            "node_fit_seconds_sum": round(sum(table[n].fit_s for n in nodes), 1),
            # a resumed sweep's time says nothing about its cost
            "wall_seconds": None if resumed[name] else seconds[name],
            "resumed_from_work_folder": resumed[name],
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
