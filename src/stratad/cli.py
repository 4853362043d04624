"""The ``stratad`` command line: fit, predict, evaluate, nodes, demo, ...

Every :class:`StratadError` is printed as one line without a traceback, with exit code 1.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from stratad._progress import console, progress_bar
from stratad.errors import StratadError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Unsupervised visual anomaly detection and localization on pretrained deep features.",
)

DataOpt = Annotated[Path, typer.Option("--data", help="dataset folder (MVTec AD, plain good/ folder, or MTD)")]
KindOpt = Annotated[str, typer.Option("--dataset", help="layout: auto, mvtec, folder, mtd")]
CategoryOpt = Annotated[str | None, typer.Option("--category", help="MVTec AD category when the folder holds several")]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of the train/test split and of every random choice")]
FractionOpt = Annotated[
    float | None, typer.Option("--train-fraction", help="fraction of good images used for training (MTD: 0.6)")
]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", help="detector option as key=value, repeatable (e.g. -p coreset_size=1000)"),
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")]


def parse_params(items: list[str] | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise StratadError(f"detector option {item!r} is not of the form key=value")
        params[key.strip()] = value.strip()
    return params


def parse_nodes(text: str | None) -> list[str] | None:
    if text is None or not text.strip():
        return None
    return [n.strip() for n in text.split(",") if n.strip()]


def _load_split(data: Path, dataset: str, category: str | None, seed: int, train_fraction: float | None) -> Any:
    from stratad.data import load_dataset

    try:
        return load_dataset(data, dataset, category, seed, train_fraction)
    except ValueError as exc:  # an unknown --dataset value
        raise StratadError(f"unknown dataset layout {dataset!r}: use auto, mvtec, folder or mtd ({exc})") from None


@app.command()
def fit(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="model file to write (written atomically)")],
    dataset: KindOpt = "auto",
    category: CategoryOpt = None,
    backbone: Annotated[str, typer.Option(help="backbone name (see `stratad backbones`)")] = "efficientnet_lite0",
    weights: Annotated[str, typer.Option(help="imagenet, random, or a path to a weights file")] = "imagenet",
    nodes: Annotated[
        str | None, typer.Option(help="comma-separated graph nodes (see `stratad nodes`); default per detector")
    ] = None,
    detector: Annotated[str, typer.Option(help="detector name (see `stratad detectors`)")] = "patchcore",
    param: ParamOpt = None,
    image_size: Annotated[int, typer.Option(help="square network input size in pixels")] = 256,
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 16,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    seed: SeedOpt = 0,
    train_fraction: FractionOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Fit a pipeline on the good training images of a dataset and save it to one file."""
    from stratad.pipeline import Pipeline

    split = _load_split(data, dataset, category, seed, train_fraction)
    pipe = Pipeline(
        backbone, parse_nodes(nodes), detector, image_size, weights, parse_params(param), seed,
        batch_size=batch_size, device=device,
    )
    console.print(f"{split.describe()}; backbone {backbone}, detector {detector}")
    with progress_bar("extracting features", len(split.train), progress) as advance:
        pipe.fit(split.train, advance)
    pipe.save(out)
    t = pipe.timings_
    console.print(
        f"fitted on {len(split.train)} images (nodes {', '.join(pipe.config.nodes)}): "
        f"extraction {t['extract_s']:.1f} s, detector {t['detector_fit_s']:.1f} s -> {out}"
    )


@app.command()
def predict(
    model: Annotated[Path, typer.Option("--model", help="model file written by `stratad fit`")],
    images: Annotated[Path, typer.Argument(help="an image file or a folder of images")],
    out: Annotated[Path, typer.Option("--out", help="output folder for overlays, .npy maps and scores.csv")],
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: as fitted)")] = None,
    progress: ProgressOpt = True,
) -> None:
    """Score images: heatmap overlays (PNG), raw float maps at original size (.npy), scores.csv."""
    import numpy as np

    from stratad.data import images_in, read_image_rgb
    from stratad.export.io import atomic_write
    from stratad.pipeline import Pipeline
    from stratad.report.overlay import heatmap_overlay, write_png

    paths = images_in(images)
    pipe = Pipeline.load(model, device=device)
    with progress_bar("scoring", len(paths), progress) as advance:
        pred = pipe.predict(paths, advance)
    out.mkdir(parents=True, exist_ok=True)
    if pred.maps is not None:
        # One colour scale for the whole run, so overlays are comparable across images.
        vmin, vmax = float(pred.maps.min()), float(pred.maps.max())
        for i, path in enumerate(pred.paths):
            full = pred.map_at_original_size(i)
            np.save(out / f"{path.stem}.npy", full.astype(np.float32))
            write_png(str(out / f"{path.stem}_overlay.png"), heatmap_overlay(read_image_rgb(path), full, vmin, vmax))

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "score"])
            for path, score in zip(pred.paths, pred.image_scores, strict=True):
                writer.writerow([str(path), f"{float(score):.6g}"])

    atomic_write(out / "scores.csv", write_csv)
    console.print(f"scored {len(paths)} images -> {out}")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option("--model", help="model file written by `stratad fit`")],
    data: DataOpt,
    dataset: KindOpt = "auto",
    category: CategoryOpt = None,
    seed: SeedOpt = 0,
    train_fraction: FractionOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the metrics to this JSON file")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: as fitted)")] = None,
    progress: ProgressOpt = True,
) -> None:
    """Image AUROC, pixel AUROC, AU-PRO@0.3, F1-max and P_h on the test split of a dataset."""
    from stratad.evaluation import evaluate_pipeline
    from stratad.export.io import atomic_write
    from stratad.pipeline import Pipeline

    split = _load_split(data, dataset, category, seed, train_fraction)
    if not split.test:
        raise StratadError(f"{data} has no test images")
    pipe = Pipeline.load(model, device=device)
    with progress_bar("scoring", len(split.test), progress) as advance:
        result, _ = evaluate_pipeline(pipe, split.test, advance)
    result["dataset"] = split.name
    print_metrics(result)
    if json_out is not None:
        text = json.dumps(result, indent=2)
        atomic_write(json_out, lambda tmp: Path(tmp).write_text(text))


def print_metrics(result: dict[str, Any]) -> None:
    table = Table(title=f"{result.get('detector')} on {result.get('dataset', 'test set')}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("image_auroc", "pixel_auroc", "aupro_30", "p_h", "f1_max", "pixel_f1_max"):
        if key in result:
            table.add_row(key, f"{result[key]:.4f}")
    table.add_row("test images", str(result.get("n_test_images")))
    table.add_row("images / s", f"{result.get('predict_images_per_second', 0):.1f}")
    console.print(table)
    if not result.get("localizes", True):
        console.print("this detector scores whole images only: no pixel AUROC / AU-PRO (no anomaly map)")


@app.command()
def nodes(
    backbone: Annotated[str, typer.Argument(help="backbone name")],
    image_size: Annotated[int, typer.Option(help="input size used to compute output shapes")] = 256,
    count: Annotated[bool, typer.Option("--count", help="print only the number of nodes")] = False,
) -> None:
    """Every torch.fx graph node of a backbone with its output shape and stride."""
    from stratad.backbones import build_backbone, list_nodes

    infos = list_nodes(build_backbone(backbone, weights="random"), image_size=image_size)
    if count:
        print(len(infos))
        return
    table = Table(title=f"{backbone}: {len(infos)} graph nodes at {image_size} px")
    for col in ("node", "channels", "height", "width", "stride"):
        table.add_column(col, justify="left" if col == "node" else "right")
    for info in infos:
        table.add_row(info.name, str(info.channels), str(info.height), str(info.width), f"{info.stride:g}")
    console.print(table)


@app.command()
def backbones() -> None:
    """List the registered backbones."""
    from stratad.backbones import list_backbones

    for name in list_backbones():
        print(name)


@app.command()
def detectors() -> None:
    """List the registered detectors and their options."""
    import dataclasses

    from stratad.detectors import detector_class, list_detectors

    for name in list_detectors():
        cls = detector_class(name)
        opts = ", ".join(f"{f.name}={getattr(cls.config_class(), f.name)!r}" for f in dataclasses.fields(cls.config_class))
        print(f"{name}: {opts}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("demo_out"),
    progress: ProgressOpt = True,
) -> None:
    """Offline demo: EfficientNet-Lite0 (ImageNet) + PatchCore on scikit-image textures with pasted defects."""
    from stratad.demo import run_demo

    results = run_demo(out, progress=progress)
    table = Table(title="demo: PatchCore on scikit-image textures")
    for col in ("texture", "image_auroc", "pixel_auroc", "aupro_30", "p_h"):
        table.add_column(col)
    for name, r in results.items():
        table.add_row(name, *(f"{r[k]:.3f}" for k in ("image_auroc", "pixel_auroc", "aupro_30", "p_h")))
    console.print(table)
    console.print(f"overlays and metrics.json in {out}")


def main() -> None:
    try:
        app()
    except StratadError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
