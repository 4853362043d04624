"""The ``stratad`` command line: each command parses its options, calls one function of
:mod:`stratad.workflows` and prints the result.

Options shared by several commands are declared once, as *option groups*: a function whose
parameters are the options and whose return value (a :class:`DataSource`, a :class:`SweepConfig`,
the pipeline settings) is what the command receives (see :func:`grouped`). Every
:class:`StratadError` and every usage error is printed as one ``error:`` line without a traceback.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from stratad._progress import Reporter, console, results
from stratad.data.datasets import DatasetKind, DataSource, MissingMasks
from stratad.errors import StratadError
from stratad.selection.config import MIN_VALIDATION_IMAGES, Criterion, FinalFit, SweepConfig
from stratad.synth.base import DefectKind
from stratad.workflows.predict import MapFormat, OverlayFormat

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Unsupervised visual anomaly detection and localization on pretrained deep features.",
)

F = TypeVar("F", bound=Callable[..., Any])


def grouped(**groups: Callable[..., Any]) -> Callable[[F], F]:
    """Replace each parameter of a command named in ``groups`` by the options of its group function
    and pass the command what that function returns. An option declared by several groups (``--seed``)
    appears once and reaches each of them."""

    def decorate(command: F) -> F:
        own = inspect.signature(command, eval_str=True).parameters
        options: dict[str, inspect.Parameter] = {}
        for name, param in own.items():
            if name not in groups:
                options.setdefault(name, param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
                continue
            for option in inspect.signature(groups[name], eval_str=True).parameters.values():
                options.setdefault(option.name, option.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            made = {
                name: group(**{k: values[k] for k in inspect.signature(group).parameters})
                for name, group in groups.items()
            }
            return command(**{k: made[k] if k in made else values[k] for k in own})

        run.__signature__ = inspect.Signature(list(options.values()))  # type: ignore[attr-defined]
        run.__annotations__ = {k: p.annotation for k, p in options.items()}
        return run  # type: ignore[return-value]

    return decorate


# -- options used by several commands --
DataOpt = Annotated[
    Path, typer.Option("--data", help="dataset folder (MVTec AD, plain good/ folder, or MTD)")
]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="seed of the train/test split and of every random choice")
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")]
ModelOpt = Annotated[Path, typer.Option("--model", help="model file written by `stratad fit`")]
BackboneOpt = Annotated[str, typer.Option(help="backbone name (see `stratad backbones`)")]
WeightsOpt = Annotated[str, typer.Option(help="imagenet, random, or a path to a weights file")]
DetectorOpt = Annotated[str, typer.Option(help="detector name (see `stratad detectors`)")]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param", "-p", help="detector option as key=value, repeatable (e.g. -p coreset_size=1000)"
    ),
]
ImageSizeOpt = Annotated[int, typer.Option(help="square network input size in pixels")]
BatchOpt = Annotated[int, typer.Option(help="images per forward pass")]
DeviceOpt = Annotated[str, typer.Option(help="cpu or cuda")]
LoadDeviceOpt = Annotated[
    str | None, typer.Option("--device", help="cpu or cuda (default: as fitted, else cpu)")
]
NodesAllOpt = Annotated[str, typer.Option(help="'all', a comma list, or glob patterns such as 'blocks.*'")]
RfOpt = Annotated[bool, typer.Option("--rf/--no-rf", help="add each node's relative receptive field")]
MissingMasksOpt = Annotated[
    MissingMasks,
    typer.Option(help="a defective test image without a mask: error, or exclude it from the pixel metrics"),
]
BitDepthOpt = Annotated[
    int | None,
    typer.Option(
        help="bits per sample of >8-bit images (8, 10, 12, 14, 16); default: the smallest depth that "
        "holds every training image",
    ),
]


def parse_params(items: list[str] | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise StratadError(f"detector option {item!r} is not of the form key=value")
        params[key.strip()] = value.strip()
    return params


def parse_list(text: str | None, option: str) -> list[str] | None:
    """A comma list; None when not given. A list without any item (``--nodes ,``) is an error."""
    if text is None:
        return None
    items = [n.strip() for n in text.split(",") if n.strip()]
    if not items:
        raise StratadError(f"{option} {text!r} names nothing")
    return items


def data_source(
    data: DataOpt,
    dataset: Annotated[DatasetKind, typer.Option(help="folder layout (auto: detected)")] = DatasetKind.auto,
    category: Annotated[
        str | None, typer.Option(help="MVTec AD category when the folder holds several")
    ] = None,
    seed: SeedOpt = 0,
    train_fraction: Annotated[
        float | None, typer.Option(help="fraction of good images used for training (MTD: 0.6)")
    ] = None,
) -> DataSource:
    """Option group: where the data lies and how it is split."""
    return DataSource(root=data, kind=dataset, category=category, seed=seed, train_fraction=train_fraction)


def pipeline_settings(
    backbone: BackboneOpt = "efficientnet_lite0",
    weights: WeightsOpt = "imagenet",
    nodes: Annotated[
        str | None,
        typer.Option(help="comma-separated graph nodes (see `stratad nodes`); default per detector"),
    ] = None,
    detector: DetectorOpt = "patchcore",
    param: ParamOpt = None,
    image_size: ImageSizeOpt = 256,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = "cpu",
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
) -> dict[str, Any]:
    """Option group: the keyword arguments of :class:`stratad.pipeline.Pipeline`."""
    return {
        "backbone": backbone,
        "weights": weights,
        "nodes": parse_list(nodes, "--nodes"),
        "detector": detector,
        "detector_params": parse_params(param),
        "image_size": image_size,
        "batch_size": batch_size,
        "device": device,
        "patch_size": patch_size,
        "patch_stride": patch_stride,
        "train_augmentations": parse_list(augment, "--augment") or [],
        "bit_depth": bit_depth,
        "seed": seed,
    }


def sweep_settings(
    backbone: BackboneOpt = "efficientnet_lite0",
    weights: WeightsOpt = "imagenet",
    nodes: NodesAllOpt = "all",
    detector: DetectorOpt = "patchcore",
    param: ParamOpt = None,
    image_size: ImageSizeOpt = 256,
    batch_size: BatchOpt = 16,
    max_grid: Annotated[
        int,
        typer.Option(
            help="average-pool larger node maps to this grid while sweeping; 0 = every node at its own "
            "resolution (early nodes then cost far more)"
        ),
    ] = 32,
    memory_mb: Annotated[
        int, typer.Option(help="RAM for cached node features (MB); 0 = half of what is free")
    ] = 0,
    workers: Annotated[
        int, typer.Option(help="parallel processes for per-node fitting; 0 = one per CPU core, at most 4")
    ] = 0,
    exact: Annotated[
        bool,
        typer.Option(
            "--exact/--fast",
            help="fit every node with exactly the detector options, on its float32 features at its own "
            "resolution (--max-grid ignored), and score every pixel: as `fit` would (much slower), not "
            "the sweep's cheaper defaults (PatchCore's 32-d coreset search, pooled float16 maps, pixel "
            "metrics on a stride-2 lattice)",
        ),
    ] = False,
    with_default: Annotated[
        bool,
        typer.Option(
            "--default/--no-default",
            help="also score the detector's default node combination as one candidate (selection then "
            "never ends below the default choice)",
        ),
    ] = True,
    pairs: Annotated[
        int,
        typer.Option(
            help="also score every pair of the N best single nodes as one candidate each (0 = none)"
        ),
    ] = 0,
    bit_depth: BitDepthOpt = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
) -> SweepConfig:
    """Option group: the settings of a sweep over nodes (``select``, ``sweep``)."""
    from stratad.device import resolve_device

    return SweepConfig(
        backbone=backbone,
        weights=weights,
        nodes=parse_list(nodes, "--nodes") or ["all"],
        detector=detector,
        detector_params=parse_params(param),
        image_size=image_size,
        batch_size=batch_size,
        max_grid=max_grid,
        memory_budget_mb=memory_mb,
        workers=workers,
        seed=seed,
        device=resolve_device(device),
        exact=exact,
        bit_depth=bit_depth,
        with_default=with_default,
        pairs=pairs,
    )


def reporter(progress: ProgressOpt = True) -> Reporter:
    """Option group: progress bars (log lines when not a terminal) on or off; notes always."""
    return Reporter(bars=progress, notes=True)


# -- commands --
@app.command()
@grouped(source=data_source, settings=pipeline_settings, report=reporter)
def fit(
    source: DataSource,
    settings: dict[str, Any],
    out: Annotated[Path, typer.Option("--out", help="model file to write (written atomically)")],
    report: Reporter,
    calibrate: Annotated[
        str | None,
        typer.Option(
            help="thresholds saved in the model: fpr=R (false-positive rate R from held-out good training "
            "images) or a labelled validation folder (good/ and defect folders with masks/: best F1)"
        ),
    ] = None,
    calibration_holdout: Annotated[
        float, typer.Option(help="with --calibrate fpr=R: fraction of the training images held out")
    ] = 0.2,
) -> None:
    """Fit a pipeline on the good training images of a dataset and save it to one file."""
    from stratad.workflows import fit_to_file

    fitted = fit_to_file(source, settings, out, report, calibrate, calibration_holdout)
    t, nodes = fitted.pipeline.timings_, ", ".join(fitted.pipeline.config.nodes)
    console.print(
        f"fitted on {fitted.n_fitted} images (nodes {nodes}): "
        f"extraction {t['extract_s']:.1f} s, detector {t['detector_fit_s']:.1f} s -> {out}"
    )
    if fitted.pipeline.calibration_ is not None:
        console.print(f"calibrated: {fitted.pipeline.calibration_.describe()}")


@app.command()
@grouped(source=data_source, report=reporter)
def adapt(
    source: DataSource,
    out: Annotated[
        Path, typer.Option("--out", help="adapted weights (.safetensors) for --weights of any command")
    ],
    report: Reporter,
    backbone: BackboneOpt = "efficientnet_lite0",
    weights: WeightsOpt = "imagenet",
    image_size: ImageSizeOpt = 256,
    method: Annotated[
        str, typer.Option(help="compact (compactness loss) or oe (outlier exposure, a logistic head)")
    ] = "compact",
    variant: Annotated[
        str, typer.Option(help="against collapse: early, ses (sample-wise early stopping), ewc, none")
    ] = "early",
    epochs: Annotated[int, typer.Option(help="passes over the training images (PANDA: 15)")] = 15,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="more options key=value: lr, batch_size, clip, ewc_lambda, ..."),
    ] = None,
    outliers: Annotated[
        Path | None, typer.Option(help="--method oe: a folder of outlier images (default: synthetic defects)")
    ] = None,
    outlier_defects: Annotated[
        str, typer.Option(help="--method oe without --outliers: the synthetic defect kind")
    ] = "cutpaste",
    fisher_images: Annotated[
        Path | None,
        typer.Option(
            help="--variant ewc: generic images for the Fisher information (default: scikit-image's)"
        ),
    ] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """PANDA: adapt a backbone's last stages to the good training images (resumable)."""
    from stratad.workflows import adapt_to_file

    params = {"variant": variant, "epochs": str(epochs), **parse_params(param)}
    run = adapt_to_file(
        source, out, backbone, weights, image_size, method, params, outliers, outlier_defects,
        fisher_images, device, report,
    )  # fmt: skip
    r = run.result
    console.print(
        f"adapted on {run.n_train} images in {r.seconds:.1f} s: "
        f"loss {r.losses[0]:.5f} -> {r.losses[-1]:.5f}, "
        f"feature spread {r.spread[0]:.3f} -> {r.spread[-1]:.3f} -> {out}"
    )


@app.command()
@grouped(report=reporter)
def pretrain(
    data: Annotated[Path, typer.Option("--data", help="a folder of images (a dataset: its training split)")],
    out: Annotated[
        Path, typer.Option("--out", help="pretrained weights (.safetensors) for --weights of any command")
    ],
    report: Reporter,
    method: Annotated[str, typer.Option(help="pixpro or ds2")] = "pixpro",
    backbone: BackboneOpt = "efficientnet_lite0",
    weights: Annotated[
        str, typer.Option(help="starting weights: imagenet, random, or a weights file")
    ] = "imagenet",
    epochs: Annotated[int, typer.Option(help="passes over the images (the paper: 400, GPU work)")] = 1,
    image_size: Annotated[int, typer.Option(help="side of each augmented view (PixPro: 224)")] = 224,
    batch_size: Annotated[int, typer.Option(help="images per step (two views each)")] = 16,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", "-p", help="more options key=value: lr, inner_dim, out_dim, delta, pos_ratio"
        ),
    ] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Dense self-supervised pretraining (PixPro, DS2) of a backbone (resumable)."""
    from stratad.workflows import pretrain_to_file

    params = {
        "method": method, "epochs": str(epochs), "image_size": str(image_size), "batch_size": str(batch_size),
        **parse_params(param),
    }  # fmt: skip
    run = pretrain_to_file(data, out, backbone, weights, params, max(256, image_size), device, report)
    r = run.result
    console.print(
        f"pretrained on {run.images} images, {sum(r.epoch_seconds):.1f} s: "
        f"loss {r.losses[0]:.4f} -> {r.losses[-1]:.4f} -> {out}"
    )


@app.command()
@grouped(report=reporter)
def predict(
    model: Annotated[
        Path, typer.Option("--model", help="model file: .stratad, or .onnx from `stratad export`")
    ],
    images: Annotated[Path, typer.Argument(help="an image file or a folder of images")],
    out: Annotated[Path, typer.Option("--out", help="output folder for maps, overlays and scores.csv")],
    maps: Annotated[
        MapFormat,
        typer.Option(help="map files: png16 (16-bit PNG, range in scores.csv), npy (float32), none"),
    ] = MapFormat.png16,
    overlays: Annotated[
        OverlayFormat, typer.Option(help="heatmap overlays: jpg (quality 90), png (lossless), none")
    ] = OverlayFormat.jpg,
    recursive: Annotated[
        bool, typer.Option("--recursive", help="every image in the folder tree (names keep the sub-folders)")
    ] = False,
    device: LoadDeviceOpt = None,
    report: Reporter = Reporter(),
) -> None:
    """Score images: maps at original size, heatmap overlays, scores.csv (streamed as images are scored)."""
    from stratad.workflows import predict_to_folder

    summary = predict_to_folder(model, images, out, device, None, maps, overlays, recursive, report)
    console.print(f"scored {summary.n_images} images -> {out}")


class CategoryChoice(str, Enum):
    auto = "auto"
    object = "object"
    texture = "texture"


class ExportFormat(str, Enum):
    onnx = "onnx"


@app.command()
def export(
    model: ModelOpt,
    out: Annotated[Path, typer.Option("--out", help="file to write, e.g. model.onnx (written atomically)")],
    export_format: Annotated[ExportFormat, typer.Option("--format", help="file format")] = ExportFormat.onnx,
    check: Annotated[
        bool,
        typer.Option("--check/--no-check", help="compare the exported file with the model before writing"),
    ] = True,
) -> None:
    """Export a fitted model: images (N, 3, S, S) in [0, 1] in, scores and smoothed maps out."""
    from stratad.inference import PARITY_TOLERANCE, export_model

    parity = export_model(model, out, check=check)
    checked = ", ".join(f"{k} {v:.1e}" for k, v in parity.items())
    limit = f" (largest relative difference to the model: {checked}; limit {PARITY_TOLERANCE:g})"
    console.print(f"{export_format.value} -> {out}{limit if parity else ''}")


@app.command()
@grouped(source=data_source, report=reporter)
def evaluate(
    model: ModelOpt,
    source: DataSource,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the metrics to this JSON file")
    ] = None,
    missing_masks: MissingMasksOpt = MissingMasks.error,
    device: LoadDeviceOpt = None,
    html: Annotated[
        Path | None, typer.Option("--report", help="also write the HTML report (index.html) to this folder")
    ] = None,
    report: Reporter = Reporter(),
) -> None:
    """Image AUROC, pixel AUROC, AU-PRO@0.3, F1-max and P_h on the test split of a dataset, and the
    observed false- and true-positive rates at the model's thresholds (``fit --calibrate``)."""
    from stratad.workflows import evaluate_to_json

    result = evaluate_to_json(
        model, source, json_out, missing_masks=missing_masks, device=device, reporter=report, report_dir=html
    )
    print_metrics(result)
    if html is not None:
        console.print(f"report -> {html / 'index.html'}")


def optional_data_source(
    data: Annotated[
        Path | None, typer.Option("--data", help="dataset folder (MVTec AD, plain good/ folder, or MTD)")
    ] = None,
    dataset: Annotated[DatasetKind, typer.Option(help="folder layout (auto: detected)")] = DatasetKind.auto,
    category: Annotated[
        str | None, typer.Option(help="MVTec AD category when the folder holds several")
    ] = None,
    seed: SeedOpt = 0,
    train_fraction: Annotated[
        float | None, typer.Option(help="fraction of good images used for training (MTD: 0.6)")
    ] = None,
) -> DataSource | None:
    """Option group: as :func:`data_source`, with ``--data`` optional."""
    if data is None:
        return None
    return data_source(data, dataset, category, seed, train_fraction)


@app.command(name="report")
@grouped(source=optional_data_source, progress_report=reporter)
def html_report(
    source: DataSource | None,
    out: Annotated[Path, typer.Option("--out", help="output folder: index.html and its images")],
    model: Annotated[
        Path | None, typer.Option("--model", help="model file: report its test split of --data")
    ] = None,
    sweep: Annotated[
        Path | None, typer.Option("--sweep", help="a `stratad sweep` or `select` folder: report its nodes")
    ] = None,
    missing_masks: MissingMasksOpt = MissingMasks.error,
    device: LoadDeviceOpt = None,
    page_size: Annotated[int, typer.Option(help="image panels per page")] = 48,
    progress_report: Reporter = Reporter(),
) -> None:
    """One self-contained HTML page: metrics, ROC / PRO / score histograms, per-image panels worst first
    (--model with --data), or a sweep's node table against the receptive field (--sweep)."""
    if (model is None) == (sweep is None):
        raise StratadError("give either --model (with --data) or --sweep")
    if sweep is not None:
        if source is not None:
            raise StratadError("--sweep reports a sweep folder; drop --data")
        from stratad.workflows.report import sweep_report_to_folder

        index = sweep_report_to_folder(sweep, out)
    else:
        if source is None:
            raise StratadError("--model needs --data: the dataset whose test split is reported")
        if page_size < 1:
            raise StratadError(f"--page-size must be at least 1, got {page_size}")
        from stratad.workflows.report import report_to_folder

        assert model is not None
        index = report_to_folder(
            model,
            source,
            out,
            missing_masks=missing_masks,
            device=device,
            reporter=progress_report,
            page_size=page_size,
        )
    console.print(f"report -> {index}")


@app.command()
def serve(
    model: Annotated[
        Path, typer.Option("--model", help="model file: .stratad, or .onnx from `stratad export`")
    ],
    host: Annotated[
        str, typer.Option(help="address to listen on (127.0.0.1: this machine only)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    device: LoadDeviceOpt = None,
    max_upload_mb: Annotated[float, typer.Option(help="largest accepted image upload (MB)")] = 32.0,
    max_files: Annotated[int, typer.Option(help="most images in one request")] = 16,
    max_megapixels: Annotated[float, typer.Option(help="largest accepted image (megapixels)")] = 40.0,
) -> None:
    """HTTP inference service: POST /predict, GET /health, GET /model, and a page at / to try images."""
    from stratad.serve import serve as run_service

    if not 0 <= port < 65536:
        raise StratadError(f"--port must lie in 0..65535 (0: any free port), got {port}")
    run_service(
        model,
        host=host,
        port=port,
        device=device,
        max_upload_mb=max_upload_mb,
        max_files=max_files,
        max_megapixels=max_megapixels,
        on_ready=lambda url: console.print(f"serving {model} on {url} (Ctrl-C stops)"),
    )


def print_metrics(result: dict[str, Any]) -> None:
    table = Table(title=f"{result.get('detector')} on {result.get('dataset', 'test set')}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("image_auroc", "pixel_auroc", "aupro_30", "p_h", "f1_max", "pixel_f1_max"):
        if key in result:
            table.add_row(key, f"{result[key]:.4f}")
    table.add_row("test images", str(result.get("n_test_images")))
    table.add_row("images / s", f"{result.get('predict_images_per_second', 0):.1f}")
    at = result.get("at_threshold")
    if at:
        for level in ("image", "pixel"):
            if level in at:
                rates = at[level]
                for rate in ("fpr", "tpr"):
                    value = rates.get(rate)
                    cell = "-" if value is None else f"{value:.4f}"
                    table.add_row(f"{level} {rate.upper()} at threshold {at[level + '_threshold']:.4g}", cell)
        masks = at.get("pixel", {}).get("masks")
        if masks:  # what predict / report / serve draw: pixels over it in images judged defective
            for rate in ("fpr", "tpr"):
                value = masks.get(rate)
                table.add_row(
                    f"mask {rate.upper()} (images judged defective)", "-" if value is None else f"{value:.4f}"
                )
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

    if image_size < 32:
        raise StratadError(f"--image-size must be at least 32 pixels, got {image_size}")
    infos = list_nodes(build_backbone(backbone, weights="random"), image_size=image_size)
    if count:
        print(len(infos))
        return
    columns = ("node", "channels", "height", "width", "stride")
    rows = [(i.name, str(i.channels), str(i.height), str(i.width), f"{i.stride:g}") for i in infos]
    print_table(f"{backbone}: {len(infos)} graph nodes at {image_size} px", columns, rows)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
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
    from stratad.detectors import describe_detectors

    for line in describe_detectors():
        print(line)


def print_top(run: Any, title: str) -> None:
    """The ranked nodes of a select or sweep run; a node with identical twins names them."""
    result = run.result
    columns = ["node", "relative_rf", "image_auroc", result.top[0].aupro_column, "p_h"]
    rows = [[_cell(r.row()[c]) for c in columns] for r in result.top]
    for row, r in zip(rows, result.top, strict=True):
        if result.aliases.get(r.node):
            row[0] += f" (= {', '.join(result.aliases[r.node])})"
    print_table(title, columns, rows)


def _cell(value: Any) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


@app.command()
@grouped(source=data_source, cfg=sweep_settings, report=reporter)
def select(
    source: DataSource,
    cfg: SweepConfig,
    out: Annotated[
        Path, typer.Option("--out", help="output folder: nodes.csv, selected.json, model.stratad")
    ],
    defects: Annotated[
        str,
        typer.Option(
            help="synthetic defect kind (simple, cutpaste, nsa) or a mixture such as simple,cutpaste,nsa "
            "(the defective validation images dealt to the kinds in turn)"
        ),
    ] = "nsa",
    criterion: Annotated[
        Criterion, typer.Option(help="p_h (harmonic mean of image AUROC and AU-PRO) or p_cls (image AUROC)")
    ] = Criterion.p_h,
    top_k: Annotated[int, typer.Option(help="how many top nodes to print")] = 5,
    final: Annotated[
        FinalFit,
        typer.Option(
            help="the model.stratad written: the chosen node fitted on all training images, on the D_T "
            "part the selection used (the paper's protocol), or none"
        ),
    ] = FinalFit.all,
    rf: RfOpt = True,
    folds: Annotated[
        int,
        typer.Option(
            help="D_T / D_V splits, each with its own defects, whose node scores are averaged (on 21 "
            "MTD images 5 splits picked worse nodes than 1: see the README)"
        ),
    ] = 1,
    category_type: Annotated[
        CategoryChoice,
        typer.Option(help="NSA's settings: object, texture, or auto (detected from the images)"),
    ] = CategoryChoice.auto,
    halving: Annotated[
        bool,
        typer.Option(
            "--halving/--exhaustive",
            help="successive halving: every node on a ninth of the data, the best third on a third, "
            "the best ninth on all of it; or every node on all of it",
        ),
    ] = False,
    sizes: Annotated[
        str | None,
        typer.Option(
            help="comma list of input sizes to select among (overrides --image-size): each size is "
            "selected in out/size_<S>/ and the best synthetic score wins"
        ),
    ] = None,
    defects_per_image: Annotated[
        int, typer.Option(help="synthetic defects made on each defective validation image (small sets)")
    ] = 1,
    report: Reporter = Reporter(),
) -> None:
    """Pick the best node for this application from synthetic defects (no real defect needed)."""
    from stratad.workflows import select_to_folder

    run = select_to_folder(
        source, cfg, out, defects=defects, criterion=criterion, top_k=top_k, final=final, rf=rf,
        category_type=category_type.value, folds=folds, halving=halving, reporter=report,
        sizes=parse_ints(sizes, "--sizes"),
        defects_per_image=defects_per_image,
    )  # fmt: skip
    print_top(run, f"top {top_k} nodes by synthetic {run.result.criterion} ({defects})")
    print_selection(run, out)


def print_selection(run: Any, out: Path) -> None:
    """What ``select`` ranked on, the test against the default, the choice and the final model."""
    r, v = run.result, run.result.validation
    per = f", {v['defects_per_image']} defects each" if v.get("defects_per_image", 1) > 1 else ""
    folds, sizes = v["folds"], f"{v['good']} good + {v['defective']} synthetic validation images{per}"
    if folds > 1:
        console.print(f"ranked on {folds} splits of {sizes} each (fit on {v['fit']}), scores averaged")
    else:
        console.print(f"ranked on {sizes} (fit on {v['fit']})")
    if min(v["good"], v["defective"]) < MIN_VALIDATION_IMAGES:
        console.print(
            f"warning: fewer than {MIN_VALIDATION_IMAGES} good or synthetic validation images per split: "
            "the ranking is unreliable (a node can win by a few images); the default nodes may do better"
        )
    if r.confirmation and r.confirmation["win_rate"] is None:
        c = r.confirmation
        console.print(
            f"kept the default {c['default']} over {c['challenger']}: {c['reason']} to test a challenger"
        )
    elif r.confirmation:
        c = r.confirmation
        console.print(
            f"{'kept the default' if c['chosen'] == c['default'] else 'chose ' + c['challenger']}: "
            f"{c['challenger']} beat the default {c['default']} in {c['win_rate']:.0%} of {c['resamples']} "
            f"bootstrap resamples of the validation set (needs {c['level']:.0%})"
        )
    if len(run.per_size) > 1:
        sizes = ", ".join(f"{s} px: {c['node']} ({c['value']:.4f})" for s, c in run.per_size.items())
        console.print(f"per size: {sizes}")
    at = f" at {run.image_size} px" if len(run.per_size) > 1 else ""
    console.print(f"selected {r.node}{at} ({r.criterion} = {r.value:.4f}) -> {out / 'selected.json'}")
    if run.model is not None:
        console.print(f"final model on {run.n_final} of {run.n_train} training images -> {run.model}")


@app.command()
@grouped(source=data_source, cfg=sweep_settings, report=reporter)
def sweep(
    source: DataSource,
    cfg: SweepConfig,
    out: Annotated[Path, typer.Option("--out", help="output folder: nodes.csv (resumable)")],
    rf: RfOpt = True,
    missing_masks: MissingMasksOpt = MissingMasks.error,
    report: Reporter = Reporter(),
) -> None:
    """Analysis: fit on the training split and evaluate EVERY node on the real test split.

    Pixel metrics use masks resized to the network input size (not the official original
    resolution), and unless --exact every second pixel row and column, to keep hundreds of nodes
    affordable; `stratad evaluate` gives official numbers.
    """
    from stratad.workflows import sweep_to_folder

    run = sweep_to_folder(source, cfg, out, missing_masks=missing_masks, rf=rf, reporter=report)
    r = run.result
    print_top(run, f"top 5 nodes on the real test split by {r.criterion}")
    console.print(f"{len(r.table)} nodes -> {out / 'nodes.csv'}; best {r.node} ({r.criterion} {r.value:.4f})")


@app.command()
@grouped(report=reporter)
def study(
    root: Annotated[
        Path, typer.Option("--root", help="MVTec-layout folder: <category>/train/good, test/...")
    ],
    out: Annotated[Path, typer.Option("--out", help="output folder: study.csv and one sweep per task")],
    categories: Annotated[
        str | None, typer.Option(help="comma list (default: every category under --root)")
    ] = None,
    backbones: Annotated[str, typer.Option(help="comma list of backbones")] = "efficientnet_lite0",
    sizes: Annotated[str, typer.Option(help="comma list of input sizes")] = "256",
    nodes: Annotated[
        str,
        typer.Option(
            help="'stages' (each backbone's stage ends), 'rf4' (4 nodes evenly spaced in relative "
            "receptive field, the study's sampling), 'all', a comma list or globs"
        ),
    ] = "stages",
    detector: DetectorOpt = "patchcore",
    param: ParamOpt = None,
    weights: WeightsOpt = "imagenet",
    max_grid: Annotated[int, typer.Option(help="average-pool node maps to this grid; 0 = native")] = 32,
    exact: Annotated[bool, typer.Option("--exact/--fast", help="as for `sweep`")] = False,
    chunk_nodes: Annotated[int, typer.Option(help="nodes per task (one backbone pass each)")] = 16,
    ray: Annotated[
        str | None,
        typer.Option(
            help="run the tasks on Ray: 'local' (a Ray instance on this machine) or a cluster address"
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(help="local processes without --ray; 0 = one per core, at most 4")
    ] = 0,
    rf: RfOpt = True,
    seed: SeedOpt = 0,
    report: Reporter = Reporter(),
) -> None:
    """Analysis: the extractor study's grid (categories x backbones x sizes x nodes) on real test splits."""
    from stratad.selection.study import StudyConfig
    from stratad.workflows import study_to_folder

    sweep = SweepConfig(
        weights=weights, detector=detector, detector_params=parse_params(param), max_grid=max_grid,
        exact=exact, seed=seed,
    )  # fmt: skip
    cfg = StudyConfig(
        root=root,
        categories=parse_list(categories, "--categories") or [],
        backbones=parse_list(backbones, "--backbones") or [],
        sizes=parse_ints(sizes, "--sizes") or [],
        nodes=parse_list(nodes, "--nodes") or ["stages"],
        chunk_nodes=chunk_nodes,
        sweep=sweep,
        rf=rf,
    )
    rows = study_to_folder(cfg, out, ray=ray, workers=workers, reporter=report)
    console.print(f"{len(rows)} rows -> {out / 'study.csv'}; `stratad analyze {out} --out DIR` reads it")


def parse_ints(text: str | None, option: str) -> list[int] | None:
    """A comma list of whole numbers; None when not given."""
    items = parse_list(text, option)
    if items is None:
        return None
    numbers = []
    for item in items:
        try:
            numbers.append(int(item))
        except ValueError:
            raise StratadError(f"{option} takes whole numbers, got {item!r}") from None
    return numbers


@app.command()
def analyze(
    sweeps: Annotated[
        list[Path], typer.Argument(help="sweep folders written by `stratad sweep` (nodes.csv)")
    ],
    out: Annotated[Path, typer.Option("--out", help="folder for oracle.json and PNG plots")],
    metric: Annotated[str, typer.Option(help="column to analyse: p_h, image_auroc, aupro_30, ...")] = "p_h",
) -> None:
    """Oracle selection functions and plots over real-test sweeps (categories x backbones x sizes)."""
    import json

    from stratad.workflows import analyze_sweeps

    results.print_json(json.dumps(analyze_sweeps(sweeps, out, metric)))
    console.print(f"oracle.json, performance_vs_rf.png, best_nodes.png -> {out}")


@app.command()
@grouped(source=data_source)
def synth(
    source: DataSource,
    out: Annotated[Path, typer.Option("--out", help="folder for images/ and masks/")],
    kind: Annotated[DefectKind, typer.Option(help="synthetic defect kind")] = DefectKind.nsa,
    n: Annotated[int, typer.Option(help="number of defective images")] = 20,
    image_size: Annotated[int, typer.Option(help="size the good images are resized to first")] = 256,
) -> None:
    """Write synthetic defects made from the good training images, with their exact masks."""
    from stratad.workflows import write_synthetic_set

    write_synthetic_set(source, kind.value, n, image_size, out)
    console.print(f"{n} {kind.value} defects -> {out}")


@app.command(name="rf")
def receptive_field(
    backbone: BackboneOpt = "efficientnet_lite0",
    size: Annotated[int, typer.Option("--size", help="input size in pixels")] = 256,
    nodes: NodesAllOpt = "all",
    weights: WeightsOpt = "imagenet",
    plot: Annotated[Path | None, typer.Option(help="write a PNG plot of relative RF per node")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="write node,relative_rf to this CSV")] = None,
) -> None:
    """Effective (gradient-based) relative receptive field of every node."""
    from stratad.workflows import receptive_field_report

    rrf = receptive_field_report(
        backbone, size, parse_list(nodes, "--nodes") or ["all"], weights, plot=plot, csv_out=csv_out,
        reporter=Reporter(bars=True),
    )  # fmt: skip
    rows = [(name, f"{value:.3f}") for name, value in rrf.items()]
    print_table(f"{backbone} at {size} px: relative effective receptive field", ("node", "relative RF"), rows)


@app.command()
@grouped(report=reporter)
def demo(
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("demo_out"),
    report: Reporter = Reporter(),
) -> None:
    """Offline demo: EfficientNet-Lite0 (ImageNet) + PatchCore on scikit-image textures, pasted defects."""
    from stratad.demo import run_demo

    by_texture = run_demo(out, progress=report.bars)
    keys = ("image_auroc", "pixel_auroc", "aupro_30", "p_h")
    rows = [(name, *(f"{r[k]:.3f}" for k in keys)) for name, r in by_texture.items()]
    print_table("demo: PatchCore on scikit-image textures", ("texture", *keys), rows)
    console.print(f"overlays, metrics.json and HTML reports (report/<texture>/index.html) in {out}")


def main(argv: list[str] | None = None) -> None:
    """The ``stratad`` entry point: one ``error:`` line and a non-zero exit for every failure."""
    import typer.main
    from typer import Abort

    try:  # typer >= 0.29 vendors click (a private module; the classes are click's own)
        from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
    except ImportError:  # pragma: no cover - typer that depends on click
        from click.exceptions import (  # type: ignore[assignment]
            ClickException,
            NoArgsIsHelpError,
            UsageError,
        )

    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="stratad", standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `stratad` or `stratad fit` alone: the help, as click shows it
        print(exc.ctx.get_help() if exc.ctx else exc.format_message(), file=sys.stderr)
        sys.exit(2)
    except UsageError as exc:  # a missing option, a value of the wrong type, an unknown choice
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        message = " ".join(exc.format_message().replace("Value error, ", "").split()).rstrip(".")
        print(f"error: {message}{where}", file=sys.stderr)
        sys.exit(2)
    except ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Abort:  # end of input at a prompt
        print("error: aborted", file=sys.stderr)
        sys.exit(1)
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
    if code == 130:  # typer turns Ctrl-C into Exit(130) before it reaches the handler above
        print("interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
