"""Real-data regression checks on MTD (slow: `pytest -m slow`; skipped without ../shared)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stratad.data import load_dataset
from stratad.evaluation import evaluate_pipeline
from stratad.pipeline import Pipeline

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_patchcore_blocks4_reaches_the_reference(mtd_root: Path) -> None:
    # Measured at P_h 0.784 (image AUROC 0.932, AU-PRO 0.677); the floor leaves room for BLAS noise.
    split = load_dataset(mtd_root, "mtd")
    pipe = Pipeline(
        nodes=["blocks.4"], detector="patchcore", image_size=256, detector_params={"coreset_size": 1000}
    )
    metrics, _ = evaluate_pipeline(pipe.fit(split.train), split.test)
    assert metrics["n_test_images"] == 773
    assert metrics["p_h"] > 0.77 and metrics["image_auroc"] > 0.92
