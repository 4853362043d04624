"""Selection on a small training set: one D_T / D_V split, five averaged splits, and one split with
four synthetic defects on each defect-bound validation image.

The issue's case: with ~21 good images, D_V holds 2 good + 4 synthetic images, and the synthetic
winner can rank far down on real defects. For each seed, --n-train MTD training images are drawn; a
real-test sweep fitted on exactly those images ranks every node (ground truth), then `select_features`
picks a node per variant (`VARIANTS`); the JSON gives the real rank and P_h of each pick.
The default pair is left out (`with_default=False`) so that only the node ranking is compared.

    .venv/bin/python benchmarks/small_set_selection.py --out benchmarks/results/small_set_selection.json
"""

from __future__ import annotations

from stratad.runtime import configure_runtime

configure_runtime()  # before torch loads: passive OpenMP waiting, freed-memory reuse

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from stratad.data import load_dataset
from stratad.data.datasets import record_mask
from stratad.selection import EvalSet, SweepConfig, run_sweep, select_features
from stratad.selection.sweep import load_uint8_images, pooled_exact

ROOT = Path(__file__).resolve().parents[1]
MTD = ROOT.parent / "shared" / "datasets" / "mtd"


#: (name, D_T / D_V splits averaged, synthetic defects per defect-bound validation image)
VARIANTS = [("f1", 1, 1), ("f5", 5, 1), ("f1_d4", 1, 4)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--n-train", type=int, default=21)
    parser.add_argument("--kind", default="cutpaste")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "small_set")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "small_set_selection.json"
    )
    args = parser.parse_args()
    if not (MTD / "MT_Free").is_dir():
        sys.exit(f"needs the MTD dataset at {MTD}")
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        split = load_dataset(MTD, "mtd", seed=seed)
        rng = np.random.default_rng(seed)
        train = [split.train[i] for i in sorted(rng.choice(len(split.train), args.n_train, replace=False))]
        cfg = SweepConfig(
            nodes=["all"],
            detector="patchcore",
            detector_params={"coreset_size": 1000},
            max_grid=16,
            seed=seed,
        )
        evaluation = EvalSet(
            load_uint8_images(split.test, cfg.image_size),
            np.array([r.label for r in split.test]),
            [record_mask(r) for r in split.test],
        )
        real_cfg = pooled_exact(cfg)
        real = run_sweep(
            real_cfg, load_uint8_images(train, cfg.image_size), evaluation, args.work / f"real_s{seed}"
        )
        ranked = [r.node for r in sorted((r for r in real if not r.same_as), key=lambda r: -r.value("p_h"))]
        canonical = {r.node: (r.same_as or r.node) for r in real}
        by_node = {r.node: r for r in real}
        row: dict[str, object] = {"seed": seed, "n_train": args.n_train, "n_nodes": len(ranked)}
        for name, folds, per_image in VARIANTS:
            result = select_features(
                train, cfg, args.work / f"{args.kind}_{name}_s{seed}", defects=args.kind, folds=folds,
                defects_per_image=per_image,
            )  # fmt: skip
            node = canonical[result.node]
            row[name] = {
                "selected": result.node,
                "real_rank": ranked.index(node) + 1,
                "real_p_h": by_node[node].value("p_h"),
                "validation": result.validation,
            }
        row["best_real_p_h"] = by_node[ranked[0]].value("p_h")
        row["mean_real_p_h"] = statistics.fmean(by_node[n].value("p_h") for n in ranked)
        print(json.dumps(row), flush=True)
        rows.append(row)
    summary = {
        name: {
            "mean_real_rank": statistics.fmean(r[name]["real_rank"] for r in rows),  # type: ignore[index]
            "mean_real_p_h": statistics.fmean(r[name]["real_p_h"] for r in rows),  # type: ignore[index]
        }
        for name, _, _ in VARIANTS
    }
    payload = {"kind": args.kind, "summary": summary, "per_seed": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
