"""``stratad fit``: fit a pipeline on a dataset's good training images and save it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stratad._progress import Reporter
from stratad.data.datasets import DatasetSplit, DataSource
from stratad.errors import StratadError

#: fraction of the training images held out for ``--calibrate fpr=...`` by default
CALIBRATION_HOLDOUT = 0.2


@dataclass
class FitResult:
    pipeline: Any
    split: DatasetSplit
    out: Path
    #: the images the detector was fitted on (the training split less any held-out calibration part)
    n_fitted: int = 0


def parse_calibrate(text: str | None) -> float | Path | None:
    """``--calibrate``: ``fpr=R`` (a target false-positive rate from held-out good training images) or
    the path of a labelled validation folder (F1-optimal thresholds)."""
    if text is None or text == "":
        return None
    if text.startswith("fpr="):
        try:
            rate = float(text[4:])
        except ValueError:
            rate = float("nan")
        if not 0.0 < rate < 1.0:
            raise StratadError(f"--calibrate fpr=R needs a rate strictly between 0 and 1, got {text!r}")
        return rate
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise StratadError(
            f"--calibrate takes fpr=R (e.g. fpr=0.01) or a labelled validation folder; {text!r} is neither"
        )
    return folder


def _check_validation(records: list[Any], split: DatasetSplit, folder: Any) -> None:
    """A labelled validation folder must hold good and defective images, none of them a training or
    test image of the dataset under any name (thresholds tuned on the test split would make its
    rates meaningless)."""
    labels = {r.label for r in records}
    if labels != {0, 1}:
        have = (
            "no images" if not records else ("only good" if labels == {0} else "only defective") + " images"
        )
        raise StratadError(
            f"--calibrate {folder}: an F1-optimal threshold needs good and defective images, the folder "
            f"has {have} (good/ and defect folders)"
        )
    from stratad.data.io import content_digest

    validation = {content_digest(r.path) for r in records}
    for name, part in (("training", split.train), ("test", split.test)):
        shared = [r.path for r in part if content_digest(r.path) in validation]
        if shared:
            raise StratadError(
                f"--calibrate {folder} holds {len(shared)} images of the {name} split of --data "
                f"(e.g. {shared[0]}); use a validation folder of other images"
            )


def fit_to_file(
    source: DataSource,
    settings: dict[str, Any],
    out: str | Path,
    reporter: Reporter | None = None,
    calibrate: str | float | Path | None = None,
    holdout: float = CALIBRATION_HOLDOUT,
) -> FitResult:
    """Fit ``Pipeline(**settings)`` on the training split of ``source`` and write it to ``out``
    (atomically). The output path, the settings and the nodes are checked before any image is read.

    ``calibrate``: ``fpr=R`` / a float holds out ``holdout`` of the training images (seeded by the
    source's seed), fits on the rest and sets thresholds at a false-positive rate R from the held-out
    images (:func:`stratad.evaluation.calibrate_on_good`); a folder fits on every training image and
    sets F1-optimal thresholds on that labelled folder (good/ and defect folders with masks/)."""
    from stratad.data.datasets import load_labelled_folder, seeded_split
    from stratad.export.io import check_output_file
    from stratad.pipeline import Pipeline

    reporter = reporter or Reporter()
    out = Path(out)
    check_output_file(out)
    target = parse_calibrate(calibrate) if isinstance(calibrate, str) else calibrate
    validation = load_labelled_folder(target) if isinstance(target, Path) else None
    if isinstance(target, float) and not 0.0 < holdout < 1.0:
        raise StratadError(f"--calibration-holdout must lie strictly between 0 and 1, got {holdout}")
    split = source.load()
    if validation is not None:
        _check_validation(validation, split, target)
        if not any(r.mask_path for r in validation):
            reporter.note(f"{target} has no masks: image thresholds only, no pixel threshold")
    pipe = Pipeline(**settings).prepare()
    cfg = pipe.config
    fit_records, held = list(split.train), []
    if isinstance(target, float):
        by_path = {r.path: r for r in split.train}
        kept, out_paths = seeded_split([r.path for r in split.train], 1.0 - holdout, source.seed)
        fit_records, held = [by_path[p] for p in kept], [by_path[p] for p in out_paths]
        from stratad.metrics.thresholds import quantile_threshold

        quantile_threshold(np.zeros(len(held)), target)  # too few held-out images: said before fitting
        if len(fit_records) < 1:
            raise StratadError("no training image is left to fit on after holding out the calibration part")
    reporter.note(
        f"{split.describe()}; backbone {cfg.backbone}, nodes {', '.join(cfg.nodes)}, detector {cfg.detector}"
        + (f"; {len(held)} training images held out for calibration" if held else "")
    )
    with reporter.bar("extracting features", len(fit_records)) as advance:
        train = pipe.training_features(fit_records, advance)
    if hasattr(pipe.detector, "progress"):  # a trained detector reports its epochs (or steps)
        unit = getattr(pipe.detector, "progress_unit", "epoch")
        with reporter.count("training") as update:
            pipe.detector.progress = lambda done, total, loss, seconds: update(
                f"{unit} {done}/{total}, loss {loss:.4f}", done, total
            )
            try:
                pipe.fit_features(train)
            finally:  # the bar is closed after this: the detector keeps no hook into it
                pipe.detector.progress = None
    else:
        pipe.fit_features(train)
    del train
    from stratad.evaluation import seen_digests

    pipe.seen_images_ = {"fitted": seen_digests(fit_records)}
    if isinstance(target, float):
        from stratad.evaluation import calibrate_on_good

        with reporter.bar("calibrating", len(held)) as advance:
            pipe.calibration_ = calibrate_on_good(
                pipe, held, target, f"{len(held)} held-out good training images of {split.name}", advance
            )
    elif validation is not None:
        from stratad.evaluation import calibrate_on_labelled

        with reporter.bar("calibrating", len(validation)) as advance:
            pipe.calibration_ = calibrate_on_labelled(
                pipe, validation, f"the labelled folder {target} ({len(validation)} images)", advance
            )
    if held or validation:
        pipe.seen_images_["calibration"] = seen_digests(held or validation or [])
    pipe.save(out)
    return FitResult(pipe, split, out, len(fit_records))
