"""Accuracy of a detector on the MTD split for several node sets (official metric semantics).

Features of the union of all requested nodes are extracted once; every node set then fits its own
detector and is evaluated at each test image's original resolution. Writes JSON. Example:

    .venv/bin/python benchmarks/mtd_accuracy.py --detector patchcore \\
        --node-sets "blocks.1;blocks.2;blocks.3;blocks.4;blocks.2,blocks.3" \\
        --out benchmarks/results/mtd_patchcore_nodes.json
"""

from __future__ import annotations

from stratad.runtime import configure_runtime

configure_runtime()  # before torch loads: passive OpenMP waiting, freed-memory reuse

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from stratad.backbones import resolve_nodes
from stratad.data import load_dataset
from stratad.detectors.base import build_seeded_detector
from stratad.evaluation import metrics_for
from stratad.features import FeatureBatch
from stratad.pipeline import Pipeline, Prediction

ROOT = Path(__file__).resolve().parents[1]
MTD = ROOT.parent / "shared" / "datasets" / "mtd"


def parse_params(items: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--detector", default="patchcore")
    parser.add_argument("--node-sets", default="blocks.1;blocks.2;blocks.3;blocks.4;blocks.2,blocks.3")
    parser.add_argument("-p", "--param", action="append", default=[], help="detector option key=value")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=MTD)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not (args.data / "MT_Free").is_dir():
        sys.exit(f"needs the MTD dataset at {args.data}")
    split = load_dataset(args.data, "mtd", seed=args.seed)
    params = parse_params(args.param)
    node_sets = [s.split(",") for s in args.node_sets.split(";")]
    pipe = Pipeline(
        backbone=args.backbone,
        nodes=sorted({n for s in node_sets for n in s}),
        detector=args.detector,
        image_size=args.image_size,
        detector_params=params,
        seed=args.seed,
    )
    backbone = pipe.backbone
    resolved_sets = [resolve_nodes(backbone, s) for s in node_sets]
    pipe.prepare()
    t0 = time.perf_counter()
    train = pipe.extract(split.train)
    extract_train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    test_parts, sizes = [], []
    for batch, batch_sizes in pipe.iter_features(split.test):
        test_parts.append(batch)
        sizes.extend(batch_sizes)
    test = FeatureBatch.concat(test_parts)
    extract_test_s = time.perf_counter() - t1
    results = []
    for requested, nodes in zip(node_sets, resolved_sets, strict=True):
        det = build_seeded_detector(args.detector, params, args.seed)
        t2 = time.perf_counter()
        det.fit(train.select(nodes))
        fit_s = time.perf_counter() - t2
        t3 = time.perf_counter()
        scores, maps = [], []
        for start in range(0, len(test), 64):
            out = det.score(test.subset(list(range(start, min(start + 64, len(test))))).select(nodes))
            scores.append(out.image_scores)
            if out.maps is not None:
                maps.append(pipe.postprocess_maps(out.maps))
        score_s = time.perf_counter() - t3
        pred = Prediction(
            [r.path for r in split.test],
            np.concatenate(scores),
            np.concatenate(maps) if maps else None,
            sizes,
        )
        metrics = metrics_for(split.test, pred)
        row = {
            "requested": requested,
            "nodes": nodes,
            **metrics,
            "detector_fit_s": round(fit_s, 2),
            "detector_score_s": round(score_s, 2),
        }
        print(json.dumps(row))
        results.append(row)
    payload = {
        "dataset": split.name,
        "backbone": args.backbone,
        "image_size": args.image_size,
        "detector": args.detector,
        "params": params,
        "n_train": len(split.train),
        "n_test": len(split.test),
        "extract_train_s": round(extract_train_s, 2),
        "extract_test_s": round(extract_test_s, 2),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
