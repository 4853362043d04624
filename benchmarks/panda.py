"""PANDA on MTD and the scikit-image texture demo: kNN on ImageNet features against the adapted ones,
PatchCore and PaDiM on the adapted backbone, and the collapse demonstration.

Image AUROC of PANDA's kNN score (k = 2, the sum of squared distances of the pooled features) for:
ImageNet features; PANDA-early, -ses, -ewc (the official settings: 15 epochs, SGD 1e-2, clipping
1e-3); PANDA-OE with synthetic CutPaste defects and with scikit-image's photographs as outliers. On
MTD (the first ``--n-train`` training images, 256 px) also PatchCore and PaDiM fitted with the
PANDA-early weights against the ImageNet ones (P_h, AU-PRO), and the collapse demonstration: the
compactness loss without protection and with EWC, with steps 1000 times larger than the official
clipping allows (clip 1.0) so collapse shows within a CPU budget, image AUROC and the feature spread
every few epochs. Nothing here is tuned on a test split: every setting is the paper's or fixed above.

    .venv/bin/python benchmarks/panda.py --work runs/panda --out benchmarks/results/panda.json
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

import numpy as np
import torch

from stratad.adapt.panda import (
    AdaptConfig,
    PooledFeatures,
    adapt,
    generic_images,
    knn_scores,
    pooled,
    ses_scores,
)
from stratad.backbones import build_backbone
from stratad.data import load_dataset
from stratad.evaluation import evaluate_pipeline
from stratad.metrics import image_auroc
from stratad.pipeline import Pipeline
from stratad.selection.sweep import load_uint8_images

ROOT = Path(__file__).resolve().parents[1]
MTD = ROOT.parent / "shared" / "datasets" / "mtd"
SIZE = 256


def knn_auroc(backbone: Any, train: torch.Tensor, test: torch.Tensor, labels: np.ndarray) -> float:
    features = PooledFeatures(backbone, torch.device("cpu"))
    scores = knn_scores(pooled(features, train), pooled(features, test))
    return float(image_auroc(labels, scores.numpy()))


def synthetic_outliers(train: torch.Tensor, seed: int) -> torch.Tensor:
    from stratad.synth import make_defects

    sources = [t.permute(1, 2, 0).numpy() for t in train]
    made = make_defects(sources, list(range(len(sources))), "cutpaste", np.random.default_rng(seed))
    return torch.stack([torch.from_numpy(np.array(d.image)).permute(2, 0, 1) for d in made])


def panda_rows(name: str, train: torch.Tensor, test: torch.Tensor, labels: np.ndarray) -> dict[str, Any]:
    rows: dict[str, Any] = {"train_images": len(train), "test_images": len(test)}
    t0 = time.perf_counter()
    rows["imagenet"] = {"image_auroc": knn_auroc(build_backbone("efficientnet_lite0"), train, test, labels)}
    rows["imagenet"]["seconds"] = round(time.perf_counter() - t0, 1)
    photos = generic_images(SIZE)
    runs: dict[str, tuple[AdaptConfig, torch.Tensor | None]] = {
        "early": (AdaptConfig(variant="early"), None),  # type: ignore[arg-type]
        "ses": (AdaptConfig(variant="ses"), None),  # type: ignore[arg-type]
        "ewc": (AdaptConfig(variant="ewc"), None),  # type: ignore[arg-type]
        "oe_cutpaste": (AdaptConfig(outlier_exposure=True), synthetic_outliers(train, 0)),
        "oe_photos": (AdaptConfig(outlier_exposure=True), photos),
    }
    for label, (cfg, outliers) in runs.items():
        backbone = build_backbone("efficientnet_lite0")
        t0 = time.perf_counter()
        result = adapt(
            backbone, train, cfg, outliers=outliers, fisher_images=photos if label == "ewc" else None
        )
        adapt_s = time.perf_counter() - t0
        if label == "ses":
            auroc = float(image_auroc(labels, ses_scores(backbone, result.checkpoints, train, test)))
        else:
            auroc = knn_auroc(backbone, train, test, labels)
        rows[label] = {
            "image_auroc": auroc,
            "adapt_seconds": round(adapt_s, 1),
            "seconds": round(time.perf_counter() - t0, 1),
            "loss_first_last": [round(result.losses[0], 6), round(result.losses[-1], 6)],
            "spread_first_last": [round(result.spread[0], 4), round(result.spread[-1], 4)],
        }
        if label == "early":
            rows["_early_state"] = result.state
        print(json.dumps({"dataset": name, "run": label, **rows[label]}), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "panda")
    parser.add_argument("--n-train", type=int, default=209)
    parser.add_argument("--collapse-epochs", type=int, default=30)
    parser.add_argument("--collapse-every", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "panda.json")
    parser.add_argument(
        "--localisation-only", action="store_true",
        help="recompute only the PatchCore / PaDiM rows from the saved PANDA-early weights into --out",
    )  # fmt: skip
    args = parser.parse_args()
    if not (MTD / "MT_Free").is_dir():
        sys.exit(f"needs the MTD dataset at {MTD}")
    from stratad.demo import TEXTURES, write_demo_dataset

    payload: dict[str, Any] = {"benchmark": "panda", "image_size": SIZE, "datasets": {}}
    split = load_dataset(MTD, "mtd")
    train_records = split.train[: args.n_train]
    if args.localisation_only:
        saved = json.loads(args.out.read_text())
        saved["datasets"]["mtd"]["localisation"] = localisation_rows(
            train_records, split.test, args.work / "mtd_early.safetensors"
        )
        args.out.write_text(json.dumps(saved, indent=2))
        return
    train = load_uint8_images(train_records, SIZE)
    test = load_uint8_images(split.test, SIZE)
    labels = np.array([r.label for r in split.test])
    rows = panda_rows("mtd", train, test, labels)
    early_state = rows.pop("_early_state")
    weights = args.work / "mtd_early.safetensors"
    weights.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file(early_state, str(weights))
    rows["localisation"] = localisation_rows(train_records, split.test, weights)
    rows["collapse"] = collapse_curves(train, test, labels, args.collapse_epochs, args.collapse_every)
    plot_collapse(rows["collapse"], args.out.with_name(args.out.stem + "_collapse_mtd.png"))
    payload["datasets"]["mtd"] = rows
    for texture in TEXTURES:
        root = write_demo_dataset(args.work / "demo", texture)
        demo = load_dataset(root)
        rows = panda_rows(
            texture,
            load_uint8_images(demo.train, SIZE),
            load_uint8_images(demo.test, SIZE),
            np.array([r.label for r in demo.test]),
        )
        rows.pop("_early_state")
        payload["datasets"][texture] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))


def localisation_rows(train_records: list[Any], test: list[Any], weights: Path) -> dict[str, Any]:
    """PatchCore and PaDiM with the ImageNet and the PANDA-early weights: on their default nodes
    (which lie before the adapted stages, so they cannot change) and PatchCore on an adapted node,
    the end of blocks.5 (stride 32)."""
    rows: dict[str, Any] = {}
    for detector, nodes in (("patchcore", None), ("padim", None), ("patchcore", ["blocks.5"])):
        for source in ("imagenet", "panda_early"):
            pipe = Pipeline(
                detector=detector, nodes=nodes, image_size=SIZE,
                weights="imagenet" if source == "imagenet" else str(weights),
            ).fit(train_records)  # fmt: skip
            metrics, _ = evaluate_pipeline(pipe, test)
            key = f"{detector}_{'+'.join(pipe.config.nodes)}_{source}"
            rows[key] = {k: round(metrics[k], 4) for k in ("image_auroc", "pixel_auroc", "aupro_30", "p_h")}
            print(json.dumps({key: rows[key]}), flush=True)
    return rows


def plot_collapse(curves: dict[str, list[dict[str, float]]], path: Path) -> None:
    """Image AUROC and feature spread against epochs, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for variant, curve in curves.items():
        left.plot([c["epoch"] for c in curve], [c["image_auroc"] for c in curve], marker="o", label=variant)
        spread = [c for c in curve if "spread" in c]
        right.plot([c["epoch"] for c in spread], [c["spread"] for c in spread], marker="o", label=variant)
    left.set(xlabel="epoch", ylabel="image AUROC (kNN, k=2)", title="MTD: compactness loss, clip 1.0")
    right.set(xlabel="epoch", ylabel="mean pairwise feature distance", title="feature spread")
    left.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def collapse_curves(
    train: torch.Tensor, test: torch.Tensor, labels: np.ndarray, epochs: int, every: int
) -> dict[str, Any]:
    """AUROC and feature spread after every ``every`` epochs, without protection and with EWC."""
    photos = generic_images(SIZE)
    return {
        variant: collapse_curve(variant, train, test, labels, epochs, every, photos)
        for variant in ("none", "ewc")
    }


def collapse_curve(
    variant: str, train: torch.Tensor, test: torch.Tensor, labels: np.ndarray, epochs: int, every: int,
    photos: torch.Tensor,
) -> list[dict[str, float]]:  # fmt: skip
    backbone = build_backbone("efficientnet_lite0")
    features = PooledFeatures(backbone, torch.device("cpu"))
    curve: list[dict[str, float]] = [
        {"epoch": 0, "image_auroc": round(knn_auroc(backbone, train, test, labels), 4)}
    ]

    def observe(epoch: int, _epochs: int, loss: float, spread: float, _s: float) -> None:
        if epoch % every == 0:
            scores = knn_scores(pooled(features, train), pooled(features, test))
            curve.append({
                "epoch": epoch, "loss": round(loss, 6), "spread": round(spread, 4),
                "image_auroc": round(float(image_auroc(labels, scores.numpy())), 4),
            })  # fmt: skip
            print(json.dumps({"collapse": variant, **curve[-1]}), flush=True)

    cfg = AdaptConfig(variant=variant, epochs=epochs, clip=1.0)  # type: ignore[arg-type]
    adapt(backbone, train, cfg, fisher_images=photos if variant == "ewc" else None, progress=observe)
    return curve


if __name__ == "__main__":
    main()
