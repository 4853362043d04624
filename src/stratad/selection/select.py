"""Application-specific feature selection with synthetic defects (Heckler & König).

Split the good training images into D_T / D_V, give 75% of D_V synthetic defects, fit the detector
on D_T for every candidate node, and keep the node with the best synthetic-validation score
(P_h, the harmonic mean of image AUROC and AU-PRO@0.3, or P_cls = image AUROC).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stratad.data.datasets import ImageRecord
from stratad.errors import StratadError
from stratad.export.io import atomic_write
from stratad.metrics.summary import harmonic_mean
from stratad.selection.config import (
    CRITERION_COLUMN,
    MIN_VALIDATION_IMAGES,
    Criterion,
    NodeResult,
    SweepConfig,
    top_pairs,
)
from stratad.selection.halving import halving_sweep
from stratad.selection.split import selection_split
from stratad.selection.sweep import EvalSet, csv_cell, load_uint8_images, run_sweep
from stratad.selection.validation import build_validation_set


@dataclass
class SelectionResult:
    node: str
    criterion: str
    value: float
    #: the ``top_k`` best nodes, best first; a node whose features equal an earlier node's appears
    #: once, under the earlier name (its other names in ``aliases``)
    top: list[NodeResult]
    #: every node, in graph order
    table: list[NodeResult]
    #: node -> the later nodes with identical outputs (timm's identity ``aa`` / ``se`` placeholders)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    #: what the nodes were ranked on: {"fit": |D_T|, "good": good |D_V|, "defective": defective |D_V|}
    validation: dict[str, int] = field(default_factory=dict)
    #: the challenger-vs-default bootstrap test (:mod:`stratad.selection.confirm`), when it ran
    confirmation: dict[str, Any] | None = None


def choose(
    results: Sequence[NodeResult], criterion: Criterion | str = Criterion.p_h, top_k: int = 5
) -> SelectionResult:
    crit = Criterion(criterion)
    column = CRITERION_COLUMN[crit]
    aliases: dict[str, list[str]] = {}
    for r in results:
        if r.same_as:
            aliases.setdefault(r.same_as, []).append(r.node)
    scored = [r for r in results if not r.same_as and not math.isnan(r.value(column))]
    if not scored:
        raise StratadError(f"no node has a {column} value to select by")
    # Ties keep graph order (earlier, cheaper node first): sorted() is stable.
    ranked = sorted(scored, key=lambda r: -r.value(column))
    best = ranked[0]
    return SelectionResult(best.node, crit.value, best.value(column), ranked[:top_k], list(results), aliases)


def check_criterion(detector: str, criterion: Criterion | str) -> None:
    """P_h needs anomaly maps: refuse it for image-only detectors before any work is done."""
    from stratad.detectors import detector_class

    if Criterion(criterion) is Criterion.p_h and not detector_class(detector).localizes:
        raise StratadError(
            f"{detector} scores whole images only, so P_h (which needs AU-PRO from anomaly maps) "
            "is undefined; select with criterion p_cls (image AUROC)"
        )


def select_features(
    train: Sequence[ImageRecord],
    cfg: SweepConfig,
    out_dir: Path,
    defects: str = "nsa",
    criterion: Criterion | str = Criterion.p_h,
    top_k: int = 5,
    defect_params: dict[str, Any] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    relative_rf: dict[str, float] | None = None,
    folds: int = 1,
    halving: bool = False,
    defects_per_image: int = 1,
) -> SelectionResult:
    """Score every candidate node on synthetic defects and choose (see the module docstring). With
    ``folds`` > 1 the training set is split that many times (``out_dir/folds/<k>``, each resumable),
    each split with its own defects, and the scores are averaged into ``out_dir/nodes.csv``. Not the
    default: on 21 MTD images, 5 averaged splits picked worse nodes than one split
    (``benchmarks/small_set_selection.py``). ``halving``: successive halving over the nodes instead
    of the exhaustive sweep (:mod:`stratad.selection.halving`); one split only.
    ``defects_per_image``: synthetic defects made on each defect-bound validation image."""
    check_criterion(cfg.detector, criterion)
    if folds < 1:
        raise StratadError(f"--folds must be at least 1, got {folds}")
    if halving and folds > 1:
        raise StratadError("--halving ranks on one split: use it with --folds 1")
    if cfg.pairs and folds > 1:  # each split would pair other nodes: their averages would not compare
        raise StratadError("--pairs ranks on one split: use it with --folds 1")
    if not halving and (out_dir / "rounds").is_dir():
        raise StratadError(f"{out_dir} holds a --halving selection; use another --out folder")
    first = selection_split(train, seed=cfg.seed)
    _check_folds(out_dir, folds)
    fold_rows, kept = [], None
    for k in range(folds):
        split = first if k == 0 else selection_split(train, seed=cfg.seed + k)
        train_images = load_uint8_images(split.fit, cfg.image_size, bit_depth=cfg.bit_depth)
        # The defects' sources are the D_T images just loaded (the same arrays a re-read would give).
        sources = [image.permute(1, 2, 0).numpy() for image in train_images]
        val = build_validation_set(
            split, defects, cfg.image_size, cfg.seed + k, cfg.bit_depth, sources, defects_per_image,
            **(defect_params or {}),
        )  # fmt: skip
        evaluation = EvalSet(val.images, val.labels, list(val.masks))
        settings: dict[str, Any] = {
            "defects": defects,
            "defect_params": dict(defect_params or {}),
            "split": split.describe(),
        }
        if defects_per_image > 1:  # (absent at 1: folders stamped before the option still resume)
            settings["defects_per_image"] = defects_per_image
        fold_dir = out_dir if folds == 1 else out_dir / "folds" / str(k)
        column = CRITERION_COLUMN[Criterion(criterion)]
        if halving:
            rows = halving_sweep(
                cfg, train_images, evaluation, fold_dir, progress, relative_rf, settings, column
            )
        else:
            rows = sweep_nodes(
                cfg, train_images, evaluation, fold_dir, progress, relative_rf, settings, column
            )
        fold_rows.append(rows)
        if k == 0:
            kept = (train_images, evaluation)
    rows = fold_rows[0] if folds == 1 else _average_folds(fold_rows, out_dir / "nodes.csv", cfg.fpr_limit)
    result = choose(rows, criterion, top_k)
    result.validation = {
        "fit": len(first.fit),
        "good": len(first.val_good),
        "defective": len(first.val_defect),
        "defects_per_image": defects_per_image,
        "folds": folds,
        "halving": halving,
    }
    assert kept is not None
    _confirm_default(result, cfg, *kept)  # on the first split's validation set
    payload = {
        "node": result.node,
        "criterion": result.criterion,
        "value": result.value,
        "defects": defects,
        "split": first.describe(),
        "validation": result.validation,
        "top": [r.row() for r in result.top],
        "aliases": result.aliases,
        "default_test": result.confirmation,
        "sweep": asdict(cfg),
    }
    text = json.dumps(payload, indent=2)
    atomic_write(out_dir / "selected.json", lambda tmp: Path(tmp).write_text(text))
    return result


def _check_folds(out_dir: Path, folds: int) -> None:
    """A folder holds a one-split run (its ``sweep.json``) or an averaged one (``folds/``), never
    both: the averaged ``nodes.csv`` must not be resumed as one split's rows, nor the reverse."""
    averaged, single = (out_dir / "folds").is_dir(), (out_dir / "sweep.json").is_file()
    if (folds > 1 and single) or (folds == 1 and averaged):
        held = "averaged splits (--folds > 1)" if averaged else "one split (--folds 1)"
        raise StratadError(f"{out_dir} holds a selection over {held}; use another --out folder or delete it")


def _average_folds(fold_rows: list[list[NodeResult]], path: Path, fpr_limit: float) -> list[NodeResult]:
    """Each candidate's metrics averaged over the folds (None where any fold has none), shape and
    aliases from the first fold, times summed; written to ``path`` in the nodes.csv layout."""
    import csv
    import dataclasses
    import io

    from stratad.selection.config import result_columns

    by_fold = [{r.node: r for r in rows} for rows in fold_rows]

    def mean(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return None if len(present) < len(values) else statistics.fmean(present)

    averaged = []
    for first in fold_rows[0]:
        same = [fold[first.node] for fold in by_fold if first.node in fold]
        image_auroc, aupro = mean([r.image_auroc for r in same]), mean([r.aupro for r in same])
        averaged.append(
            dataclasses.replace(
                first,
                image_auroc=image_auroc or 0.0,
                pixel_auroc=mean([r.pixel_auroc for r in same]),
                aupro=aupro,
                # P_h of the averaged parts, so the row stays the harmonic mean of its own columns.
                p_h=None if image_auroc is None or aupro is None else harmonic_mean(image_auroc, aupro),
                fit_s=round(sum(r.fit_s for r in same), 3),
                score_s=round(sum(r.score_s for r in same), 3),
            )
        )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=result_columns(fpr_limit))
    writer.writeheader()
    for row in averaged:
        writer.writerow({k: csv_cell(v) for k, v in row.row().items()})
    text = buffer.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return averaged


def _confirm_default(
    result: SelectionResult, cfg: SweepConfig, train_images: Any, evaluation: EvalSet
) -> None:
    """With the default nodes among the candidates, the synthetic winner replaces them only when it
    beats them clearly (:mod:`stratad.selection.confirm`); ``result`` is updated in place."""
    if not cfg.with_default:
        return
    from stratad.backbones import build_backbone
    from stratad.selection.confirm import confirm_against_default
    from stratad.selection.sweep import default_candidates

    default = default_candidates(cfg, build_backbone(cfg.backbone, weights=cfg.weights, seed=cfg.seed))[0]
    rows = {r.node: r for r in result.table}
    if result.node == default or default not in rows:
        return
    v = result.validation
    if min(v["good"], v["defective"]) < MIN_VALIDATION_IMAGES:
        # A bootstrap of one or two good images resamples the same images every time and is
        # overconfident: too few images to test means no evidence against the default.
        result.confirmation = {
            "challenger": result.node,
            "default": default,
            "win_rate": None,
            "resamples": 0,
            "level": None,
            "chosen": default,
            "reason": f"fewer than {MIN_VALIDATION_IMAGES} good or synthetic validation images",
        }
        result.node = default
        result.value = rows[default].value(CRITERION_COLUMN[Criterion(result.criterion)])
        return
    outcome = confirm_against_default(
        cfg, train_images, evaluation, result.node, default, result.criterion,
        per_image=v.get("defects_per_image", 1),
    )  # fmt: skip
    result.confirmation = asdict(outcome)
    if outcome.chosen == default:
        result.node = default
        result.value = rows[default].value(CRITERION_COLUMN[Criterion(result.criterion)])


def sweep_and_choose(
    cfg: SweepConfig,
    train_images: Any,
    evaluation: EvalSet,
    out_dir: Path,
    criterion: Criterion | str = Criterion.p_h,
    top_k: int = 5,
    progress: Callable[[str, int, int], None] | None = None,
    relative_rf: dict[str, float] | None = None,
    settings: dict[str, Any] | None = None,
) -> SelectionResult:
    """``sweep`` (the real test split): score every node (:func:`sweep_nodes`), then rank them by
    ``criterion`` with :func:`choose`, as ``select`` ranks them on its synthetic set."""
    column = CRITERION_COLUMN[Criterion(criterion)]
    rows = sweep_nodes(cfg, train_images, evaluation, out_dir, progress, relative_rf, settings, column)
    return choose(rows, criterion, top_k)


def sweep_nodes(
    cfg: SweepConfig,
    train_images: Any,
    evaluation: EvalSet,
    out_dir: Path,
    progress: Callable[[str, int, int], None] | None,
    relative_rf: dict[str, float] | None,
    settings: dict[str, Any] | None,
    column: str,
) -> list[NodeResult]:
    """The exhaustive sweep of ``select`` and ``sweep``: every node, then (``cfg.pairs``) every pair
    of the best ones by ``column``, in the same resumable folder."""
    rows = run_sweep(cfg, train_images, evaluation, out_dir, progress, relative_rf, settings)
    if cfg.pairs > 1:
        pairs = top_pairs(rows, cfg.pairs, column)
        rows = run_sweep(cfg, train_images, evaluation, out_dir, progress, relative_rf, settings, pairs)
    return rows


def real_test_set(
    train: Sequence[ImageRecord],
    test: Sequence[ImageRecord],
    cfg: SweepConfig,
    missing_masks: str = "error",
    load_progress: Callable[[int], None] | None = None,
) -> tuple[Any, EvalSet, int]:
    """Training images and the real test split (masks at the network size) for a sweep, and how
    many defective images without a mask leave the pixel metrics (``missing_masks="exclude"``)."""
    import numpy as np

    from stratad.data.datasets import pixel_records, record_mask
    from stratad.detectors import detector_class

    if not test:
        raise StratadError("there are no test images to sweep on")
    localizes = detector_class(cfg.detector).localizes
    keep, missing = pixel_records(list(test), missing_masks) if localizes else (list(range(len(test))), [])
    train_images = load_uint8_images(train, cfg.image_size, load_progress, cfg.bit_depth)
    test_images = load_uint8_images(test, cfg.image_size, load_progress, cfg.bit_depth)
    labels = np.array([r.label for r in test])
    masks = [record_mask(test[i], size=cfg.image_size) for i in keep] if localizes else []
    return (
        train_images,
        EvalSet(test_images, labels, masks, np.array(keep) if missing else None),
        len(missing),
    )


def default_criterion(detector: str) -> Criterion:
    """P_h for detectors with maps, image AUROC for image-only ones."""
    from stratad.detectors import detector_class

    return Criterion.p_h if detector_class(detector).localizes else Criterion.p_cls
