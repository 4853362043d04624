"""A tiny calibrated model and its report, made once for the report tests."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from stratad.data.datasets import DatasetSplit, DataSource
from tests.conftest import make_mvtec

#: the tiny model: two nodes at 64 px, a small coreset (fits in about a second)
SETTINGS = {"nodes": ["blocks.2", "blocks.3"], "image_size": 64, "detector_params": {"coreset_size": 100}}
#: a good test image whose name is HTML: the page must show it as text
ODD_NAME = "<b>odd<i> & name.png"


@dataclass
class ReportCase:
    model: Path
    source: DataSource
    split: DatasetSplit
    index: Path
    page_size: int
    #: the test images' ``parent/name`` as the page shows them, worst (highest score) first
    worst_first: list[str]


@pytest.fixture(scope="session")
def calibrated_report(tmp_path_factory: pytest.TempPathFactory) -> ReportCase:
    from stratad.pipeline import Pipeline
    from stratad.workflows import fit_to_file
    from stratad.workflows.report import report_to_folder

    root = tmp_path_factory.mktemp("report")
    category = make_mvtec(root / "mvtec", n_train=8, n_good=6, n_bad=5)
    shutil.copy(category / "test" / "good" / "000.png", category / "test" / "good" / ODD_NAME)
    source = DataSource(root=category)
    model = root / "m.stratad"
    fit_to_file(source, dict(SETTINGS), model, calibrate="fpr=0.2", holdout=0.5)
    index = report_to_folder(model, source, root / "report", page_size=5)
    split = source.load()
    scores = Pipeline.load(model).predict(split.test).image_scores  # independent of the report
    order = np.argsort(-scores, kind="stable")
    names = [f"{r.path.parent.name}/{r.path.name}" for r in split.test]
    return ReportCase(model, source, split, index, 5, [names[i] for i in order])
