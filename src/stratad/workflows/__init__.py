"""What the CLI commands do, as plain functions that tests and benchmarks call too.

Each command of :mod:`stratad.cli` parses its options, calls ONE function of this package and
prints what it returns; long work reports through a :class:`stratad._progress.Reporter`. The names
below are imported on first use, so the command line starts without importing torch for ``--help``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stratad._lazy import lazy_attributes

if TYPE_CHECKING:
    from stratad.workflows.adapt import AdaptRun, adapt_to_file
    from stratad.workflows.fit import FitResult, fit_to_file
    from stratad.workflows.predict import (
        MapFormat,
        OverlayFormat,
        PredictSummary,
        encode_png16,
        file_sha256,
        load_model,
        predict_to_folder,
        read_png16_map,
        write_synthetic_set,
    )
    from stratad.workflows.pretrain import PretrainRun, pretrain_to_file
    from stratad.workflows.report import report_to_folder, sweep_report_to_folder
    from stratad.workflows.study import (
        SweepRun,
        analyze_sweeps,
        check_sweep_setup,
        evaluate_to_json,
        receptive_field_report,
        select_to_folder,
        study_to_folder,
        sweep_to_folder,
    )

_WHERE = {
    "AdaptRun": "adapt",
    "adapt_to_file": "adapt",
    "FitResult": "fit",
    "fit_to_file": "fit",
    "PretrainRun": "pretrain",
    "pretrain_to_file": "pretrain",
    "report_to_folder": "report",
    "sweep_report_to_folder": "report",
    **dict.fromkeys(
        [
            "MapFormat",
            "OverlayFormat",
            "PredictSummary",
            "encode_png16",
            "file_sha256",
            "load_model",
            "predict_to_folder",
            "read_png16_map",
            "write_synthetic_set",
        ],
        "predict",
    ),
    **dict.fromkeys(
        [
            "SweepRun",
            "analyze_sweeps",
            "check_sweep_setup",
            "evaluate_to_json",
            "receptive_field_report",
            "select_to_folder",
            "study_to_folder",
            "sweep_to_folder",
        ],
        "study",
    ),
}
__getattr__ = lazy_attributes(__name__, _WHERE)
__all__ = [
    "AdaptRun",
    "FitResult",
    "MapFormat",
    "OverlayFormat",
    "PredictSummary",
    "PretrainRun",
    "SweepRun",
    "adapt_to_file",
    "analyze_sweeps",
    "check_sweep_setup",
    "encode_png16",
    "evaluate_to_json",
    "file_sha256",
    "fit_to_file",
    "load_model",
    "predict_to_folder",
    "pretrain_to_file",
    "read_png16_map",
    "receptive_field_report",
    "report_to_folder",
    "select_to_folder",
    "study_to_folder",
    "sweep_report_to_folder",
    "sweep_to_folder",
    "write_synthetic_set",
]
