"""``select``, ``sweep``, ``evaluate``, ``analyze`` and ``rf``: which node, how good, and why."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stratad._progress import Reporter
from stratad.data.datasets import DataSource, MissingMasks
from stratad.errors import StratadError
from stratad.selection.config import Criterion, FinalFit, SweepConfig, candidate_nodes

if TYPE_CHECKING:
    from stratad.selection.select import SelectionResult
    from stratad.selection.study import StudyConfig


def check_sweep_setup(cfg: SweepConfig) -> SweepConfig:
    """Every sweep setting checked before any work: the config's ranges, the detector and its
    options, the memory budget, the worker count and the nodes (resolved on the backbone)."""
    from stratad.backbones import build_backbone, resolve_nodes
    from stratad.detectors.base import build_seeded_detector
    from stratad.selection.sweep import (
        check_sweep_config,
        memory_budget_bytes,
        resolve_workers,
        sweep_detector_params,
    )

    check_sweep_config(cfg)
    build_seeded_detector(cfg.detector, sweep_detector_params(cfg), cfg.seed)
    memory_budget_bytes(cfg)
    resolve_workers(cfg.workers)
    resolve_nodes(build_backbone(cfg.backbone, weights=cfg.weights, seed=cfg.seed), cfg.nodes)
    return cfg


def _relative_rf(cfg: SweepConfig, enabled: bool, reporter: Reporter) -> dict[str, float] | None:
    if not enabled:
        return None
    from stratad.backbones import build_backbone, relative_receptive_field
    from stratad.backbones.receptive import default_cache_dir

    with reporter.status("estimating effective receptive fields"):
        return relative_receptive_field(
            build_backbone(cfg.backbone, weights=cfg.weights, seed=cfg.seed),
            cfg.nodes,
            image_size=cfg.image_size,
            cache_dir=default_cache_dir() / "receptive_fields",
        )


def _fix_bit_depth(cfg: SweepConfig, train: Sequence[Any]) -> None:
    from stratad.data.io import detect_bit_depth

    if cfg.bit_depth is None:
        cfg.bit_depth = detect_bit_depth(r.path for r in train)


@dataclass
class SweepRun:
    """What ``select`` / ``sweep`` found: the ranked nodes, and for ``select`` the final model."""

    result: SelectionResult
    out: Path
    n_train: int
    #: the chosen node's final model (``select --final``)
    model: Path | None = None
    #: the images it was fitted on
    n_final: int = 0
    #: defective test images left out of the pixel metrics for want of a mask (``sweep``)
    n_missing_masks: int = 0
    #: the input size chosen (``select --sizes``), and each size's choice and value
    image_size: int = 0
    per_size: dict[int, dict[str, Any]] = field(default_factory=dict)


def select_to_folder(
    source: DataSource,
    cfg: SweepConfig,
    out: str | Path,
    *,
    defects: str = "nsa",
    criterion: Criterion | str = Criterion.p_h,
    top_k: int = 5,
    final: FinalFit | str = "all",
    rf: bool = True,
    category_type: str = "auto",
    folds: int = 1,
    halving: bool = False,
    sizes: Sequence[int] | None = None,
    defects_per_image: int = 1,
    reporter: Reporter | None = None,
) -> SweepRun:
    """Pick the best node of ``cfg`` from synthetic ``defects`` on the good training images of
    ``source`` (Heckler & König); write nodes.csv, selected.json and model.stratad: the chosen node
    (or the default combination, when it wins) fitted on all training images (``final="all"``), on
    the D_T part the selection fitted on (``"selection"``, the paper's protocol), or none.
    ``category_type`` (object, texture, or auto: detected from the images) picks NSA's settings.
    ``halving``: successive halving instead of the exhaustive sweep (one split). ``sizes``: select
    at each input size (``out/size_<S>/``, the default pair a candidate at each) and keep the size
    whose choice scores best on the synthetic set (the first size on ties). ``defects_per_image``:
    synthetic defects made on each defect-bound validation image."""
    from stratad.pipeline import Pipeline
    from stratad.selection import select_features
    from stratad.selection.select import check_criterion
    from stratad.synth.base import defect_kinds

    reporter = reporter or Reporter()
    out = Path(out)
    kinds = defect_kinds(defects)
    check_criterion(cfg.detector, criterion)
    if top_k < 1:
        raise StratadError(f"--top-k must be at least 1, got {top_k}")
    if folds < 1:
        raise StratadError(f"--folds must be at least 1, got {folds}")
    check_sweep_setup(cfg)
    chosen_sizes = list(dict.fromkeys(sizes or [cfg.image_size]))
    bad = [s for s in chosen_sizes if s < 32]
    if bad:
        raise StratadError(f"--sizes must be at least 32 pixels, got {bad[0]}")
    if defects_per_image < 1:
        raise StratadError(f"--defects-per-image must be at least 1, got {defects_per_image}")
    split = source.load()
    _fix_bit_depth(cfg, split.train)
    defect_params: dict[str, Any] = {}
    if "nsa" in kinds:
        kind = category_type if category_type != "auto" else detect_category_type(split.train, cfg)
        defect_params["category_type"] = kind
        reporter.note(
            f"NSA settings for {'a texture' if kind == 'texture' else 'an object'}"
            f"{' (detected)' if category_type == 'auto' else ''}"
        )
    runs: dict[int, SweepRun] = {}
    for size in chosen_sizes:
        sized = replace(cfg, image_size=size)
        where = out if len(chosen_sizes) == 1 else out / f"size_{size}"
        relative_rf = _relative_rf(sized, rf, reporter)
        with reporter.count(
            f"scoring nodes at {size} px" if len(chosen_sizes) > 1 else "scoring nodes"
        ) as update:
            result = select_features(
                split.train,
                sized,
                where,
                defects,
                criterion,
                top_k,
                defect_params,
                update,
                relative_rf,
                folds,
                halving,
                defects_per_image,
            )
        runs[size] = SweepRun(result, where, len(split.train), image_size=size)
    size = max(runs, key=lambda s: runs[s].result.value)  # max() keeps the first of equals
    run = runs[size]
    run.per_size = {s: {"node": r.result.node, "value": r.result.value} for s, r in runs.items()}
    cfg = replace(cfg, image_size=size)
    if len(runs) > 1:
        from stratad.export.io import atomic_write

        text = json.dumps({"image_size": size, "node": run.result.node, "per_size": run.per_size}, indent=2)
        atomic_write(out / "selected.json", lambda tmp: Path(tmp).write_text(text))
    final = FinalFit(final)
    if final is not FinalFit.none:
        from stratad.selection.split import selection_split

        images = split.train if final is FinalFit.all else selection_split(split.train, seed=cfg.seed).fit
        pipe = Pipeline(
            backbone=cfg.backbone,
            nodes=candidate_nodes(run.result.node),
            detector=cfg.detector,
            image_size=cfg.image_size,
            weights=cfg.weights,
            detector_params=cfg.detector_params,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            device=cfg.device,
            bit_depth=cfg.bit_depth,
        )
        with reporter.bar("final fit", len(images)) as advance:
            pipe.fit(images, advance)
        run.model, run.n_final = out / "model.stratad", len(images)  # beside selected.json
        pipe.save(run.model)
    return run


def detect_category_type(train: Sequence[Any], cfg: SweepConfig, count: int = 16) -> str:
    """Object or texture, from up to ``count`` training images spread over the set."""
    from stratad.data.io import read_image_resized
    from stratad.synth.foreground import detect_category_type

    step = max(1, len(train) // count)
    images = [read_image_resized(r.path, cfg.image_size, cfg.bit_depth) for r in train[::step][:count]]
    return detect_category_type(images)


def sweep_to_folder(
    source: DataSource,
    cfg: SweepConfig,
    out: str | Path,
    *,
    missing_masks: MissingMasks | str = MissingMasks.error,
    rf: bool = True,
    top_k: int = 5,
    reporter: Reporter | None = None,
) -> SweepRun:
    """Fit every node of ``cfg`` on the training split of ``source`` and evaluate it on the real
    test split (nodes.csv, resumable); the best node is chosen as ``select`` chooses."""
    from stratad.selection.select import default_criterion, real_test_set, sweep_and_choose

    reporter = reporter or Reporter()
    out = Path(out)
    check_sweep_setup(cfg)
    split = source.load()
    if not split.test:
        raise StratadError(f"{source.root} has no test images to sweep on")
    _fix_bit_depth(cfg, split.train)
    cfg.label = split.name
    relative_rf = _relative_rf(cfg, rf, reporter)
    with reporter.bar("loading images", len(split.train) + len(split.test)) as advance:
        train_images, evaluation, n_missing = real_test_set(
            split.train, split.test, cfg, missing_masks, advance
        )
    if n_missing:
        reporter.note(f"{n_missing} defective images without a mask are left out of the pixel metrics")
    criterion = default_criterion(cfg.detector)
    with reporter.count("scoring nodes") as update:
        result = sweep_and_choose(cfg, train_images, evaluation, out, criterion, top_k, update, relative_rf)
    return SweepRun(result, out, len(split.train), n_missing_masks=n_missing)


#: the file in a report folder saying which model and data it reports
REPORT_STAMP = "report.json"


def _report_stamp(model: str | Path, source: DataSource) -> dict[str, Any]:
    from stratad.workflows.predict import file_sha256

    path = Path(model)
    if not path.is_file():
        raise StratadError(f"model file not found: {path}")
    return {
        "model_sha256": file_sha256(path),
        "data": str(Path(source.root).expanduser().resolve()),
        "dataset": str(getattr(source.kind, "value", source.kind)),
        "category": source.category,
        "seed": source.seed,
        "train_fraction": source.train_fraction,
    }


def _check_report_folder(folder: Path, stamp: dict[str, Any]) -> None:
    """A folder that holds the report of another model or data is refused (a rewrite of the same
    report is fine)."""
    previous = folder / REPORT_STAMP
    if not previous.is_file():
        return
    try:
        old = json.loads(previous.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if old != stamp:
        raise StratadError(
            f"{folder} holds the report of another model or data ({previous}); use another --out folder "
            "or delete it"
        )


def evaluate_to_json(
    model: str | Path,
    source: DataSource,
    json_out: str | Path | None = None,
    *,
    missing_masks: MissingMasks | str = MissingMasks.error,
    device: str | None = None,
    reporter: Reporter | None = None,
    report_dir: str | Path | None = None,
    page_size: int = 48,
) -> dict[str, Any]:
    """The official metrics of a saved model on the test split of ``source`` (and a JSON file, and
    with ``report_dir`` the HTML report of :mod:`stratad.report.html`, ``page_size`` panels per
    page). A report folder holding the report of another model or data is refused before scoring."""
    from stratad.evaluation import evaluate_pipeline
    from stratad.export.io import atomic_write, check_output_file, check_output_folder
    from stratad.pipeline import Pipeline

    reporter = reporter or Reporter()
    if json_out is not None:
        check_output_file(Path(json_out), "metrics.json")
    stamp: dict[str, Any] = {}
    if report_dir is not None:
        from stratad.report.html import check_page_size

        check_page_size(page_size)
        stamp = _report_stamp(model, source)
        _check_report_folder(check_output_folder(Path(report_dir)), stamp)
    split = source.load()
    if not split.test:
        raise StratadError(f"{source.root} has no test images")
    pipe = Pipeline.load(model, device=device)
    with reporter.bar("scoring", len(split.test)) as advance:
        result, prediction = evaluate_pipeline(pipe, split.test, advance, missing_masks=missing_masks)
    result["dataset"] = split.name
    if json_out is not None:
        text = json.dumps(result, indent=2)
        atomic_write(Path(json_out), lambda tmp: Path(tmp).write_text(text))
    if report_dir is not None:
        from stratad.report.html import render_model_report

        with reporter.bar("report panels", len(split.test)) as advance:
            render_model_report(
                pipe,
                split.test,
                prediction,
                result,
                Path(report_dir),
                title=f"{split.name}: {Path(model).name}",
                page_size=page_size,
                progress=advance,
            )
        text = json.dumps(stamp, indent=2)
        atomic_write(Path(report_dir) / REPORT_STAMP, lambda tmp: Path(tmp).write_text(text))
    return result


def study_to_folder(
    cfg: StudyConfig,
    out: str | Path,
    *,
    ray: str | None = None,
    workers: int = 0,
    reporter: Reporter | None = None,
) -> list[dict[str, Any]]:
    """The extractor study's grid over an MVTec-layout root (:mod:`stratad.selection.study`), on
    local processes or on Ray; ``<out>/study.csv`` (which ``analyze`` reads) and its rows."""
    from stratad.selection.study import run_study

    reporter = reporter or Reporter()
    with reporter.count("study tasks") as update:
        return run_study(cfg, out, ray, workers, update)


def analyze_sweeps(sweeps: Sequence[str | Path], out: str | Path, metric: str = "p_h") -> dict[str, Any]:
    """The extractor study's oracles over real-test sweeps or study tables (oracle.json): for
    ``metric`` at the top level, for classification, localisation and P_h each under its own key,
    and the mean ``metric`` per block and layer type; plots of ``metric`` against the receptive field
    and of the best nodes."""
    from stratad.export.io import atomic_write
    from stratad.report.plots import best_node_histogram, performance_vs_receptive_field
    from stratad.selection.oracle import (
        best_node_counts,
        group_means,
        load_sweep_rows,
        oracle_table,
        study_oracles,
    )

    out = Path(out)
    rows = load_sweep_rows([Path(s) for s in sweeps], metric)
    table: dict[str, Any] = {
        **oracle_table(rows, metric),
        "tasks": study_oracles(rows),
        "groups": group_means(rows, metric),
    }
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(table, indent=2)
    atomic_write(out / "oracle.json", lambda tmp: Path(tmp).write_text(text))
    performance_vs_receptive_field(rows, out / "performance_vs_rf.png", metric)
    best_node_histogram(best_node_counts(rows, metric), out / "best_nodes.png")
    return table


def receptive_field_report(
    backbone: str,
    image_size: int,
    nodes: Sequence[str],
    weights: str = "imagenet",
    *,
    plot: str | Path | None = None,
    csv_out: str | Path | None = None,
    reporter: Reporter | None = None,
) -> dict[str, float]:
    """Relative effective receptive field of each node (cached), optionally as CSV and a PNG plot."""
    from stratad.backbones import build_backbone, relative_receptive_field
    from stratad.backbones.receptive import default_cache_dir
    from stratad.export.io import atomic_write
    from stratad.report.plots import receptive_field_plot

    reporter = reporter or Reporter()
    if image_size < 32:
        raise StratadError(f"--size must be at least 32 pixels, got {image_size}")
    model = build_backbone(backbone, weights=weights)
    with reporter.status("backpropagating from every node"):
        rrf = relative_receptive_field(
            model, list(nodes), image_size=image_size, cache_dir=default_cache_dir() / "receptive_fields"
        )
    if csv_out is not None:
        text = "\n".join(["node,relative_rf"] + [f"{k},{v:.6f}" for k, v in rrf.items()]) + "\n"
        atomic_write(Path(csv_out), lambda tmp: Path(tmp).write_text(text))
    if plot is not None:
        receptive_field_plot(rrf, Path(plot), f"{backbone} at {image_size} px")
    return rrf
