"""``stratad report``: one self-contained HTML page of a model on a labelled test set, or of the nodes
of a ``stratad sweep`` / ``select`` folder (:mod:`stratad.report.html`)."""

from __future__ import annotations

from pathlib import Path

from stratad._progress import Reporter
from stratad.data.datasets import DataSource, MissingMasks
from stratad.errors import StratadError


def report_to_folder(
    model: str | Path,
    source: DataSource,
    out: str | Path,
    *,
    missing_masks: MissingMasks | str = MissingMasks.error,
    device: str | None = None,
    reporter: Reporter | None = None,
    page_size: int = 48,
) -> Path:
    """Score the test split of ``source`` with the saved pipeline ``model``, compute the metrics
    ``evaluate`` computes, and write ``out/index.html`` with its panel images (``out/panels/``);
    return the page's path. The output folder, the page size, the model file and the dataset are
    checked before any image is scored."""
    from stratad.evaluation import evaluate_pipeline
    from stratad.export.io import check_output_folder
    from stratad.pipeline import Pipeline
    from stratad.report.html import check_page_size, render_model_report

    reporter = reporter or Reporter()
    check_page_size(page_size)
    if missing_masks not in {m.value for m in MissingMasks}:
        raise StratadError(f"--missing-masks takes error or exclude, got {missing_masks!r}")
    folder = check_output_folder(out)
    split = source.load()
    if not split.test:
        raise StratadError(f"{source.root} has no test images to report on")
    pipe = Pipeline.load(model, device=device)
    with reporter.bar("scoring", len(split.test)) as advance:
        metrics, prediction = evaluate_pipeline(pipe, split.test, advance, missing_masks=missing_masks)
    metrics["dataset"] = split.name
    with reporter.bar("drawing panels", len(split.test)) as advance:
        index = render_model_report(
            pipe,
            split.test,
            prediction,
            metrics,
            folder,
            title=f"{split.name}: {Path(model).name}",
            page_size=page_size,
            progress=advance,
        )
    reporter.note(f"report written to {index}")
    return index


def sweep_report_to_folder(folder: str | Path, out: str | Path) -> Path:
    """Write ``out/index.html`` for the ``--out`` folder of ``stratad sweep`` or ``stratad select``
    (its ``nodes.csv``, and ``selected.json`` when there is one); return the page's path."""
    from stratad.export.io import check_output_folder
    from stratad.report.html import render_sweep_report, sweep_rows

    source = Path(folder)
    sweep_rows(source)  # a folder without nodes.csv is said before anything is created
    return render_sweep_report(source, check_output_folder(out))
