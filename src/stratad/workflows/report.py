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
    checked before any image is scored; a folder holding the report of another model or data is
    refused. The same as ``evaluate --report`` (:func:`stratad.workflows.evaluate_to_json`)."""
    from stratad.workflows.study import evaluate_to_json

    if missing_masks not in {m.value for m in MissingMasks}:
        raise StratadError(f"--missing-masks takes error or exclude, got {missing_masks!r}")
    evaluate_to_json(
        model,
        source,
        missing_masks=missing_masks,
        device=device,
        reporter=reporter,
        report_dir=out,
        page_size=page_size,
    )
    index = Path(out) / "index.html"
    (reporter or Reporter()).note(f"report written to {index}")
    return index


def sweep_report_to_folder(folder: str | Path, out: str | Path) -> Path:
    """Write ``out/index.html`` for the ``--out`` folder of ``stratad sweep`` or ``stratad select``
    (its ``nodes.csv``, and ``selected.json`` when there is one); return the page's path."""
    from stratad.export.io import check_output_folder
    from stratad.report.html import render_sweep_report, sweep_rows

    source = Path(folder)
    sweep_rows(source)  # a folder without nodes.csv is said before anything is created
    return render_sweep_report(source, check_output_folder(out))
