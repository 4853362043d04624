"""``stratad fit``: fit a pipeline on a dataset's good training images and save it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stratad._progress import Reporter
from stratad.data.datasets import DatasetSplit, DataSource


@dataclass
class FitResult:
    pipeline: Any
    split: DatasetSplit
    out: Path


def fit_to_file(
    source: DataSource, settings: dict[str, Any], out: str | Path, reporter: Reporter | None = None
) -> FitResult:
    """Fit ``Pipeline(**settings)`` on the training split of ``source`` and write it to ``out``
    (atomically). The output path, the settings and the nodes are checked before any image is read."""
    from stratad.export.io import check_output_file
    from stratad.pipeline import Pipeline

    reporter = reporter or Reporter()
    out = Path(out)
    check_output_file(out)
    split = source.load()
    pipe = Pipeline(**settings).prepare()
    cfg = pipe.config
    reporter.note(
        f"{split.describe()}; backbone {cfg.backbone}, nodes {', '.join(cfg.nodes)}, detector {cfg.detector}"
    )
    with reporter.bar("extracting features", len(split.train)) as advance:
        train = pipe.training_features(split.train, advance)
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
    pipe.save(out)
    return FitResult(pipe, split, out)
