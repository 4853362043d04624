"""The ``stratad`` command line: fit, predict, evaluate, nodes, demo, ...

Every :class:`StratadError` is printed as one line without a traceback, with exit code 1.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from stratad._progress import console, count_progress, progress_bar, results
from stratad.data.datasets import MissingMasks
from stratad.errors import StratadError
from stratad.workflows import MapFormat

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Unsupervised visual anomaly detection and localization on pretrained deep features.",
)

DataOpt = Annotated[
    Path, typer.Option("--data", help="dataset folder (MVTec AD, plain good/ folder, or MTD)")
]
KindOpt = Annotated[str, typer.Option("--dataset", help="layout: auto, mvtec, folder, mtd")]
CategoryOpt = Annotated[
    str | None, typer.Option("--category", help="MVTec AD category when the folder holds several")
]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="seed of the train/test split and of every random choice")
]
FractionOpt = Annotated[
    float | None,
    typer.Option("--train-fraction", help="fraction of good images used for training (MTD: 0.6)"),
]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param", "-p", help="detector option as key=value, repeatable (e.g. -p coreset_size=1000)"
    ),
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")]
MissingMasksOpt = Annotated[
    MissingMasks,
    typer.Option(
        "--missing-masks",
        help="a defective test image without a mask: error (default) or exclude it from the pixel metrics",
    ),
]
BitDepthOpt = Annotated[
    int | None,
    typer.Option(
        "--bit-depth",
        help="bits per sample of >8-bit images (8, 10, 12, 14, 16); default: the smallest depth that "
        "holds every training image",
    ),
]


def check_image_size(size: int, option: str = "--image-size") -> int:
    if size < 32:
        raise StratadError(f"{option} must be at least 32 pixels, got {size}")
    return size


def parse_params(items: list[str] | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise StratadError(f"detector option {item!r} is not of the form key=value")
        params[key.strip()] = value.strip()
    return params


def parse_nodes(text: str | None) -> list[str] | None:
    """A comma list; None when not given. A list without any name (``--nodes ,``) is an error."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise StratadError(f"--nodes {text!r} names no node; give node names, glob patterns or 'all'")
    return names


def parse_list(text: str, option: str) -> list[str]:
    items = [n.strip() for n in text.split(",") if n.strip()]
    if not items:
        raise StratadError(f"{option} {text!r} names nothing")
    return items


def _load_split(
    data: Path, dataset: str, category: str | None, seed: int, train_fraction: float | None
) -> Any:
    from stratad.data import load_dataset

    try:
        return load_dataset(data, dataset, category, seed, train_fraction)
    except ValueError as exc:  # an unknown --dataset value
        raise StratadError(
            f"unknown dataset layout {dataset!r}: use auto, mvtec, folder or mtd ({exc})"
        ) from None


@app.command()
def fit(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="model file to write (written atomically)")],
    dataset: KindOpt = "auto",
    category: CategoryOpt = None,
    backbone: Annotated[
        str, typer.Option(help="backbone name (see `stratad backbones`)")
    ] = "efficientnet_lite0",
    weights: Annotated[str, typer.Option(help="imagenet, random, or a path to a weights file")] = "imagenet",
    nodes: Annotated[
        str | None,
        typer.Option(help="comma-separated graph nodes (see `stratad nodes`); default per detector"),
    ] = None,
    detector: Annotated[str, typer.Option(help="detector name (see `stratad detectors`)")] = "patchcore",
    param: ParamOpt = None,
    image_size: Annotated[int, typer.Option(help="square network input size in pixels")] = 256,
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 16,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    patch_size: Annotated[
        int, typer.Option(help="encode every patch of this size on its own (DS2 / CutPaste GDE: 32); 0 = off")
    ] = 0,
    patch_stride: Annotated[int, typer.Option(help="stride between patches when --patch-size > 0")] = 4,
    augment: Annotated[
        str | None,
        typer.Option(help="extra training copies: comma list of hflip, vflip, rot90, rot180, rot270, jitter"),
    ] = None,
    bit_depth: BitDepthOpt = None,
    seed: SeedOpt = 0,
    train_fraction: FractionOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Fit a pipeline on the good training images of a dataset and save it to one file."""
    from stratad.export.io import check_output_file
    from stratad.pipeline import Pipeline

    check_output_file(out)
    split = _load_split(data, dataset, category, seed, train_fraction)
    pipe = Pipeline(
        backbone=backbone,
        nodes=parse_nodes(nodes),
        detector=detector,
        image_size=image_size,
        weights=weights,
        detector_params=parse_params(param),
        seed=seed,
        batch_size=batch_size,
        device=device,
        patch_size=patch_size,
        patch_stride=patch_stride,
        train_augmentations=[] if augment is None else parse_list(augment, "--augment"),
        bit_depth=bit_depth,
    )
    pipe.prepare()
    console.print(
        f"{split.describe()}; backbone {backbone}, nodes {', '.join(pipe.config.nodes)}, detector {detector}"
    )
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
    maps: Annotated[
        MapFormat,
        typer.Option(help="map files: png16 (16-bit PNG, range in scores.csv), npy (float32), none"),
    ] = MapFormat.png16,
    overlays: Annotated[bool, typer.Option("--overlays/--no-overlays", help="write heatmap overlays")] = True,
    recursive: Annotated[
        bool, typer.Option("--recursive", help="every image in the folder tree (names keep the sub-folders)")
    ] = False,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: as fitted, else cpu)")] = None,
    progress: ProgressOpt = True,
) -> None:
    """Score images: maps at original size, heatmap overlays, scores.csv (streamed as images are scored)."""
    from stratad.data import images_in
    from stratad.workflows import predict_to_folder

    total = len(images_in(images, recursive=recursive))
    with progress_bar("scoring", total, progress) as advance:
        summary = predict_to_folder(model, images, out, device, advance, maps, overlays, recursive)
    console.print(f"scored {summary.n_images} images -> {out}")


class ExportFormat(str, Enum):
    onnx = "onnx"


@app.command()
def export(
    model: Annotated[Path, typer.Option("--model", help="model file written by `stratad fit`")],
    out: Annotated[Path, typer.Option("--out", help="file to write, e.g. model.onnx (written atomically)")],
    export_format: Annotated[ExportFormat, typer.Option("--format", help="onnx")] = ExportFormat.onnx,
    check: Annotated[
        bool,
        typer.Option("--check/--no-check", help="compare the exported file with the model before writing"),
    ] = True,
) -> None:
    """Export a fitted model: images (N, 3, S, S) in [0, 1] in, scores and smoothed maps out."""
    from stratad.export.io import check_output_file
    from stratad.inference import PARITY_TOLERANCE, export_onnx
    from stratad.pipeline import Pipeline

    check_output_file(out, "model.onnx")
    pipe = Pipeline.load(model, device="cpu")
    parity = export_onnx(pipe, out, check=check)
    checked = ", ".join(f"{k} {v:.1e}" for k, v in parity.items())
    note = (
        f" (largest relative difference to the model: {checked}; limit {PARITY_TOLERANCE:g})"
        if parity
        else ""
    )
    console.print(f"{export_format.value} -> {out}{note}")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option("--model", help="model file written by `stratad fit`")],
    data: DataOpt,
    dataset: KindOpt = "auto",
    category: CategoryOpt = None,
    seed: SeedOpt = 0,
    train_fraction: FractionOpt = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the metrics to this JSON file")
    ] = None,
    missing_masks: MissingMasksOpt = MissingMasks.error,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: as fitted, else cpu)")] = None,
    progress: ProgressOpt = True,
) -> None:
    """Image AUROC, pixel AUROC, AU-PRO@0.3, F1-max and P_h on the test split of a dataset."""
    from stratad.evaluation import evaluate_pipeline
    from stratad.export.io import atomic_write, check_output_file
    from stratad.pipeline import Pipeline

    if json_out is not None:
        check_output_file(json_out, "metrics.json")
    split = _load_split(data, dataset, category, seed, train_fraction)
    if not split.test:
        raise StratadError(f"{data} has no test images")
    pipe = Pipeline.load(model, device=device)
    with progress_bar("scoring", len(split.test), progress) as advance:
        result, _ = evaluate_pipeline(pipe, split.test, advance, missing_masks=missing_masks)
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
    results.print(table)
    if result.get("n_excluded_from_pixel_metrics"):
        console.print(
            f"{result['n_excluded_from_pixel_metrics']} defective images without a mask are left out of the "
            "pixel metrics (--missing-masks exclude)"
        )
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

    check_image_size(image_size)
    infos = list_nodes(build_backbone(backbone, weights="random"), image_size=image_size)
    if count:
        print(len(infos))
        return
    table = Table(title=f"{backbone}: {len(infos)} graph nodes at {image_size} px")
    for col in ("node", "channels", "height", "width", "stride"):
        table.add_column(col, justify="left" if col == "node" else "right")
    for info in infos:
        table.add_row(info.name, str(info.channels), str(info.height), str(info.width), f"{info.stride:g}")
    results.print(table)


@app.command()
def backbones() -> None:
    """List the registered backbones."""
    from stratad.backbones import list_backbones

    for name in list_backbones():
        print(name)


@app.command()
def detectors() -> None:
    """List the registered detectors and their options."""
    from stratad.detectors import detector_class, list_detectors
    from stratad.detectors.base import config_to_dict

    for name in list_detectors():
        cls = detector_class(name)
        opts = ", ".join(f"{k}={v}" for k, v in config_to_dict(cls.config_class()).items())
        where = "image + pixel" if cls.localizes else "image only"
        print(f"{name} ({where}): {opts}")


def _sweep_config(
    backbone: str,
    weights: str,
    nodes: str,
    detector: str,
    param: list[str] | None,
    image_size: int,
    batch_size: int,
    max_grid: int,
    memory_mb: int,
    workers: int,
    seed: int,
    device: str,
    exact: bool,
    bit_depth: int | None = None,
) -> Any:
    """The sweep settings, every one checked (nodes resolved on the backbone) before any work."""
    from stratad.backbones import build_backbone, resolve_nodes
    from stratad.detectors.base import build_seeded_detector
    from stratad.device import resolve_device
    from stratad.selection import SweepConfig
    from stratad.selection.sweep import (
        check_sweep_config,
        memory_budget_bytes,
        resolve_workers,
        sweep_detector_params,
    )

    cfg = SweepConfig(
        backbone=backbone,
        weights=weights,
        nodes=parse_nodes(nodes) or ["all"],
        detector=detector,
        detector_params=parse_params(param),
        image_size=check_image_size(image_size),
        batch_size=batch_size,
        max_grid=max_grid,
        memory_budget_mb=memory_mb,
        workers=workers,
        seed=seed,
        device=resolve_device(device),
        exact=exact,
        bit_depth=bit_depth,
    )
    check_sweep_config(cfg)
    build_seeded_detector(detector, sweep_detector_params(cfg), seed)  # a bad detector or option
    memory_budget_bytes(cfg)
    resolve_workers(workers)
    resolve_nodes(build_backbone(backbone, weights=weights, seed=seed), cfg.nodes)
    return cfg


def print_top(result: Any, title: str) -> None:
    """The ranked nodes of a select or sweep run (aliases show which node they repeat)."""
    columns = [
        c for c in ("node", "relative_rf", "image_auroc", "aupro_30", "p_h", "same_as") if c in result.top[0]
    ]
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in result.top:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    results.print(table)


def _fix_bit_depth(cfg: Any, split: Any) -> None:
    from stratad.data.io import detect_bit_depth

    if cfg.bit_depth is None:
        cfg.bit_depth = detect_bit_depth(r.path for r in split.train)


def _rf_for(cfg: Any, enabled: bool) -> dict[str, float] | None:
    if not enabled:
        return None
    from stratad.backbones import build_backbone, relative_receptive_field
    from stratad.backbones.receptive import default_cache_dir

    with console.status("estimating effective receptive fields"):
        return relative_receptive_field(
            build_backbone(cfg.backbone, weights=cfg.weights, seed=cfg.seed),
            cfg.nodes,
            image_size=cfg.image_size,
            cache_dir=default_cache_dir() / "receptive_fields",
        )


BackboneOpt = Annotated[str, typer.Option(help="backbone name (see `stratad backbones`)")]
WeightsOpt = Annotated[str, typer.Option(help="imagenet, random, or a path to a weights file")]
NodesAllOpt = Annotated[str, typer.Option(help="'all', a comma list, or glob patterns such as 'blocks.*'")]
MaxGridOpt = Annotated[int, typer.Option(help="average-pool larger node maps to this grid while sweeping")]
MemoryOpt = Annotated[
    int, typer.Option("--memory-mb", help="RAM for cached node features (MB); 0 = half of what is free")
]
WorkersOpt = Annotated[
    int, typer.Option(help="parallel processes for per-node fitting; 0 = one per CPU core, at most 4")
]
ExactOpt = Annotated[
    bool,
    typer.Option(
        "--exact/--fast",
        help="fit every node with exactly the detector options and score every pixel (slower), not the "
        "sweep's cheaper defaults (PatchCore's 32-d coreset search, pixel metrics on a stride-2 lattice)",
    ),
]
RfOpt = Annotated[bool, typer.Option("--rf/--no-rf", help="add each node's relative receptive field")]


@app.command()
def select(
    data: DataOpt,
    out: Annotated[
        Path, typer.Option("--out", help="output folder: nodes.csv, selected.json, model.stratad")
    ],
    dataset: KindOpt = "auto",
    category: CategoryOpt = None,
    backbone: BackboneOpt = "efficientnet_lite0",
    weights: WeightsOpt = "imagenet",
    nodes: NodesAllOpt = "all",
    detector: Annotated[str, typer.Option(help="detector name")] = "patchcore",
    param: ParamOpt = None,
    defects: Annotated[str, typer.Option(help="synthetic defects: simple, cutpaste, nsa")] = "nsa",
    criterion: Annotated[
        str, typer.Option(help="p_h (harmonic mean of image AUROC and AU-PRO) or p_cls")
    ] = "p_h",
    top_k: Annotated[int, typer.Option(help="how many top nodes to print")] = 5,
    fit_final: Annotated[
        bool, typer.Option("--fit-final/--no-fit-final", help="fit the chosen node on all training images")
    ] = True,
    image_size: Annotated[int, typer.Option(help="square network input size")] = 256,
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 16,
    max_grid: MaxGridOpt = 32,
    memory_mb: MemoryOpt = 0,
    workers: WorkersOpt = 0,
    exact: ExactOpt = False,
    rf: RfOpt = True,
    bit_depth: BitDepthOpt = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    seed: SeedOpt = 0,
    train_fraction: FractionOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Pick the best node for this application from synthetic defects (no real defect needed)."""
    from stratad.pipeline import Pipeline
    from stratad.selection import Criterion, select_features
    from stratad.selection.select import check_criterion
    from stratad.synth import list_defect_kinds

    if defects not in list_defect_kinds():
        raise StratadError(f"unknown defect kind {defects!r}; available: {', '.join(list_defect_kinds())}")
    if criterion not in [c.value for c in Criterion]:
        raise StratadError(f"unknown criterion {criterion!r}; use p_h or p_cls")
    check_criterion(detector, criterion)
    if top_k < 1:
        raise StratadError(f"--top-k must be at least 1, got {top_k}")
    cfg = _sweep_config(
        backbone,
        weights,
        nodes,
        detector,
        param,
        image_size,
        batch_size,
        max_grid,
        memory_mb,
        workers,
        seed,
        device,
        exact,
        bit_depth,
    )
    split = _load_split(data, dataset, category, seed, train_fraction)
    _fix_bit_depth(cfg, split)
    relative_rf = _rf_for(cfg, rf)
    with count_progress("scoring nodes", progress) as update:
        result = select_features(
            split.train, cfg, out, defects, criterion, top_k, progress=update, relative_rf=relative_rf
        )
    print_top(result, f"top {top_k} nodes by synthetic {result.criterion} ({defects})")
    console.print(
        f"selected {result.node} ({result.criterion} = {result.value:.4f}) -> {out / 'selected.json'}"
    )
    if fit_final:
        pipe = Pipeline(
            backbone=backbone,
            nodes=[result.node],
            detector=detector,
            image_size=image_size,
            weights=weights,
            detector_params=parse_params(param),
            seed=seed,
            batch_size=batch_size,
            device=device,
            bit_depth=cfg.bit_depth,
        )
        with progress_bar("final fit", len(split.train), progress) as advance2:
            pipe.fit(split.train, advance2)
        pipe.save(out / "model.stratad")
        console.print(f"final model on all {len(split.train)} training images -> {out / 'model.stratad'}")


@app.command()
def sweep(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="output folder: nodes.csv (resumable)")],
    dataset: KindOpt = "auto",
    category: CategoryOpt = None,
    backbone: BackboneOpt = "efficientnet_lite0",
    weights: WeightsOpt = "imagenet",
    nodes: NodesAllOpt = "all",
    detector: Annotated[str, typer.Option(help="detector name")] = "patchcore",
    param: ParamOpt = None,
    image_size: Annotated[int, typer.Option(help="square network input size")] = 256,
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 16,
    max_grid: MaxGridOpt = 32,
    memory_mb: MemoryOpt = 0,
    workers: WorkersOpt = 0,
    exact: ExactOpt = False,
    rf: RfOpt = True,
    missing_masks: MissingMasksOpt = MissingMasks.error,
    bit_depth: BitDepthOpt = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    seed: SeedOpt = 0,
    train_fraction: FractionOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Analysis: fit on the training split and evaluate EVERY node on the real test split.

    Pixel metrics use masks resized to the network input size (not the official original
    resolution), and unless --exact every second pixel row and column, to keep hundreds of nodes
    affordable; `stratad evaluate` gives official numbers.
    """
    from stratad.selection.select import default_criterion, real_test_set, sweep_and_choose

    cfg = _sweep_config(
        backbone,
        weights,
        nodes,
        detector,
        param,
        image_size,
        batch_size,
        max_grid,
        memory_mb,
        workers,
        seed,
        device,
        exact,
        bit_depth,
    )
    split = _load_split(data, dataset, category, seed, train_fraction)
    if not split.test:
        raise StratadError(f"{data} has no test images to sweep on")
    _fix_bit_depth(cfg, split)
    cfg.label = split.name
    relative_rf = _rf_for(cfg, rf)
    with progress_bar("loading images", len(split.train) + len(split.test), progress) as advance:
        train_images, evaluation, n_missing = real_test_set(
            split.train, split.test, cfg, missing_masks, advance
        )
    if n_missing:
        console.print(f"{n_missing} defective images without a mask are left out of the pixel metrics")
    criterion = default_criterion(detector)
    with count_progress("scoring nodes", progress) as update:
        result = sweep_and_choose(cfg, train_images, evaluation, out, criterion, 5, update, relative_rf)
    print_top(result, f"top 5 nodes on the real test split by {result.criterion}")
    best = f"best {result.node} ({result.criterion} {result.value:.4f})"
    console.print(f"{len(result.table)} nodes -> {out / 'nodes.csv'}; {best}")


@app.command()
def analyze(
    sweeps: Annotated[
        list[Path], typer.Argument(help="sweep folders written by `stratad sweep` (nodes.csv)")
    ],
    out: Annotated[Path, typer.Option("--out", help="folder for oracle.json and PNG plots")],
    metric: Annotated[str, typer.Option(help="column to analyse: p_h, image_auroc, aupro_30, ...")] = "p_h",
) -> None:
    """Oracle selection functions and plots over real-test sweeps (categories x backbones x sizes)."""
    from stratad.report.plots import best_node_histogram, performance_vs_receptive_field
    from stratad.selection.oracle import best_node_counts, load_sweep_rows, oracle_table

    rows = load_sweep_rows(sweeps, metric)
    table = oracle_table(rows, metric)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(table, indent=2)
    from stratad.export.io import atomic_write

    atomic_write(out / "oracle.json", lambda tmp: Path(tmp).write_text(text))
    performance_vs_receptive_field(rows, out / "performance_vs_rf.png", metric)
    best_node_histogram(best_node_counts(rows, metric), out / "best_nodes.png")
    results.print_json(text)
    console.print(f"oracle.json, performance_vs_rf.png, best_nodes.png -> {out}")


@app.command()
def synth(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="folder for images/ and masks/")],
    kind: Annotated[str, typer.Option(help="simple, cutpaste or nsa")] = "nsa",
    n: Annotated[int, typer.Option(help="number of defective images")] = 20,
    dataset: KindOpt = "auto",
    category: CategoryOpt = None,
    image_size: Annotated[int, typer.Option(help="size the good images are resized to first")] = 256,
    seed: SeedOpt = 0,
) -> None:
    """Write synthetic defects made from the good training images, with their exact masks."""

    from stratad.workflows import write_synthetic_set

    if n < 1:
        raise StratadError("--n must be at least 1")
    check_image_size(image_size)
    split = _load_split(data, dataset, category, seed, None)
    write_synthetic_set(split.train, kind, n, image_size, out, seed)
    console.print(f"{n} {kind} defects -> {out}")


@app.command(name="rf")
def receptive_field(
    backbone: Annotated[str, typer.Option(help="backbone name")] = "efficientnet_lite0",
    size: Annotated[int, typer.Option("--size", help="input size in pixels")] = 256,
    nodes: NodesAllOpt = "all",
    weights: WeightsOpt = "imagenet",
    plot: Annotated[Path | None, typer.Option(help="write a PNG plot of relative RF per node")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="write node,relative_rf to this CSV")] = None,
) -> None:
    """Effective (gradient-based) relative receptive field of every node."""
    from stratad.backbones import build_backbone, relative_receptive_field
    from stratad.backbones.receptive import default_cache_dir

    check_image_size(size, "--size")
    model = build_backbone(backbone, weights=weights)
    with console.status("backpropagating from every node"):
        rrf = relative_receptive_field(
            model,
            parse_nodes(nodes) or ["all"],
            image_size=size,
            cache_dir=default_cache_dir() / "receptive_fields",
        )
    table = Table(title=f"{backbone} at {size} px: relative effective receptive field")
    table.add_column("node")
    table.add_column("relative RF", justify="right")
    for name, value in rrf.items():
        table.add_row(name, f"{value:.3f}")
    results.print(table)
    if csv_out is not None:
        lines = ["node,relative_rf"] + [f"{k},{v:.6f}" for k, v in rrf.items()]
        csv_out.write_text("\n".join(lines) + "\n")
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(6.0, 0.08 * len(rrf)), 4))
        ax.plot(range(len(rrf)), list(rrf.values()), marker=".")
        ax.set_xlabel("node (graph order)")
        ax.set_ylabel("relative receptive field")
        ax.set_title(f"{backbone} at {size} px")
        fig.tight_layout()
        fig.savefig(plot, dpi=120)
        plt.close(fig)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("demo_out"),
    progress: ProgressOpt = True,
) -> None:
    """Offline demo: EfficientNet-Lite0 (ImageNet) + PatchCore on scikit-image textures, pasted defects."""
    from stratad.demo import run_demo

    by_texture = run_demo(out, progress=progress)
    table = Table(title="demo: PatchCore on scikit-image textures")
    for col in ("texture", "image_auroc", "pixel_auroc", "aupro_30", "p_h"):
        table.add_column(col)
    for name, r in by_texture.items():
        table.add_row(name, *(f"{r[k]:.3f}" for k in ("image_auroc", "pixel_auroc", "aupro_30", "p_h")))
    results.print(table)
    console.print(f"overlays and metrics.json in {out}")


def main() -> None:
    try:
        app()
    except StratadError as exc:
        # Plain print: rich would wrap a long path onto a second line.
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:  # disk full, permission denied, ...: still one line, no traceback
        print(
            f"error: {exc.strerror or exc} ({exc.filename})" if exc.filename else f"error: {exc}",
            file=sys.stderr,
        )
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
