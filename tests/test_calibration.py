"""``fit --calibrate``: thresholds from held-out good training images or a labelled folder, stored in
the model file, applied by predict and measured by evaluate."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stratad.data.datasets import DataSource, ImageRecord
from stratad.errors import ModelFileError
from stratad.pipeline import Pipeline
from tests.clirun import stratad
from tests.conftest import make_mvtec

SETTINGS = {"image_size": 64, "nodes": ["blocks.2", "blocks.3"], "detector_params": {"coreset_size": 200}}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mvtec(tmp_path_factory.mktemp("cal"), n_train=24, n_good=6, n_bad=6)


@pytest.fixture(scope="module")
def calibrated(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stratad.workflows import fit_to_file

    out = tmp_path_factory.mktemp("model") / "m.stratad"
    fitted = fit_to_file(DataSource(root=data), SETTINGS, out, calibrate="fpr=0.1", holdout=0.5)
    assert fitted.n_fitted == 12 and fitted.pipeline.calibration_.n_good == 12
    return out


def test_fpr_thresholds_are_the_quantiles_of_the_held_out_images(data: Path, calibrated: Path) -> None:
    from stratad.data.datasets import seeded_split
    from stratad.metrics.thresholds import quantile_threshold

    pipe = Pipeline.load(calibrated)
    cal = pipe.calibration_
    assert cal is not None and cal.method == "fpr" and cal.target_fpr == 0.1
    train = sorted((data / "train" / "good").glob("*.png"))
    _, held = seeded_split(train, 0.5, 0)
    prediction = pipe.predict([ImageRecord(p) for p in held])
    q = quantile_threshold(prediction.image_scores, 0.1)
    assert cal.image_threshold == q.threshold and cal.expected_fpr == q.expected_fpr
    assert q.rank == 12  # ceil((12 + 1) * 0.9): the largest of the 12 held-out scores
    assert int((prediction.image_scores > cal.image_threshold).sum()) == 0
    pixels = np.concatenate([prediction.map_at_original_size(i).ravel() for i in range(len(held))])
    assert cal.pixel_threshold == quantile_threshold(pixels, 0.1).threshold
    assert float(np.mean(pixels > cal.pixel_threshold)) <= 0.1


def test_predict_and_evaluate_apply_the_stored_thresholds(
    data: Path, calibrated: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pred"
    result = stratad(
        "predict",
        "--model",
        str(calibrated),
        str(data / "test"),
        "--recursive",
        "--out",
        str(out),
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    cal = Pipeline.load(calibrated).calibration_
    assert cal is not None
    with open(out / "scores.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    assert len(rows) == 12
    for row in rows:
        score = float(row["score"])
        assert row["decision"] == ("defective" if score > cal.image_threshold else "good")
        assert (float(row["normalized_score"]) > 0.5) == (row["decision"] == "defective")
        from PIL import Image

        mask = np.asarray(Image.open(out / row["mask"])) > 0
        assert mask.shape == (64, 64) and float(row["defect_area"]) == pytest.approx(mask.mean())
    bad = [r for r in rows if "spot" in r["image"]]
    assert all(r["decision"] == "defective" for r in bad)  # bright squares: every one is found
    metrics = tmp_path / "m.json"
    ev = stratad(
        "evaluate", "--model", str(calibrated), "--data", str(data), "--json", str(metrics), "--no-progress"
    )
    assert ev.returncode == 0, ev.stderr
    assert "image FPR at threshold" in ev.stdout
    at = json.loads(metrics.read_text())["at_threshold"]
    good = [float(r["score"]) for r in rows if "good" in r["image"]]
    assert at["image"]["fpr"] == pytest.approx(np.mean(np.array(good) > cal.image_threshold))
    assert at["image"]["tpr"] == 1.0 and at["image"]["n_good"] == 6 and at["image"]["n_defective"] == 6
    assert 0 <= at["pixel"]["fpr"] <= 1 and at["pixel"]["tpr"] > 0.5
    assert at["pixel"]["n_good"] + at["pixel"]["n_defective"] == 12 * 64 * 64


def test_a_labelled_folder_gives_f1_optimal_thresholds(data: Path, tmp_path: Path) -> None:
    from stratad.metrics.image import f1_max
    from stratad.workflows import fit_to_file

    val = tmp_path / "val"
    shutil.copytree(data / "test" / "good", val / "good")
    shutil.copytree(data / "test" / "spot", val / "spot")
    shutil.copytree(data / "ground_truth" / "spot", val / "spot" / "masks")
    fitted = fit_to_file(DataSource(root=data), SETTINGS, tmp_path / "f1.stratad", calibrate=str(val))
    cal = fitted.pipeline.calibration_
    assert cal is not None and cal.method == "f1" and cal.n_good == 6 and cal.n_defective == 6
    assert fitted.n_fitted == 24  # every training image: the validation folder is separate
    scores = fitted.pipeline.predict(sorted((val / "good").glob("*.png")) + sorted(val.glob("spot/*.png")))
    labels = np.array([0] * 6 + [1] * 6)
    assert cal.image_f1 == pytest.approx(f1_max(labels, scores.image_scores))
    assert cal.pixel_threshold is not None and cal.pixel_f1 is not None and cal.pixel_f1 > 0.5


def test_calibration_survives_save_and_load_and_a_refit_drops_it(calibrated: Path, tmp_path: Path) -> None:
    from stratad.export.io import load_tensors, save_tensors

    pipe = Pipeline.load(calibrated)
    copy = tmp_path / "copy.stratad"
    pipe.save(copy)
    assert Pipeline.load(copy).calibration_ == pipe.calibration_
    assert pipe.describe()["calibration"]["image_threshold"] == pipe.calibration_.image_threshold
    tensors, meta = load_tensors(calibrated)
    meta.pop("format_version", None)
    meta["calibration"]["image_threshold"] = "high"
    save_tensors(tmp_path / "bad.stratad", tensors, meta)
    with pytest.raises(ModelFileError, match="unusable calibration"):
        Pipeline.load(tmp_path / "bad.stratad")


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("fpr=2", "strictly between 0 and 1"),
        ("fpr=x", "strictly between 0 and 1"),
        ("nowhere/", "fpr=R (e.g. fpr=0.01) or a labelled validation folder"),
        ("fpr=0.001", "needs at least 999 held-out good images"),
    ],
)
def test_bad_calibration_requests_are_one_line_errors(
    data: Path, tmp_path: Path, value: str, needle: str
) -> None:
    out = tmp_path / "m.stratad"
    result = stratad(
        "fit",
        "--data",
        str(data),
        "--image-size",
        "64",
        "--calibrate",
        value,
        "--out",
        str(out),
        "--no-progress",
    )
    assert result.returncode == 1 and not out.exists()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr


def test_evaluate_writes_the_report_and_report_refuses_mixed_requests(
    data: Path, calibrated: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    ev = stratad(
        "evaluate", "--model", str(calibrated), "--data", str(data), "--report", str(report), "--no-progress"
    )
    assert ev.returncode == 0, ev.stderr
    page = (report / "index.html").read_text(encoding="utf-8")
    assert "image threshold" in page and len(list((report / "panels").glob("*_overlay.jpg"))) == 12
    for args, needle in (
        (["--model", str(calibrated)], "--model needs --data"),
        (["--model", str(calibrated), "--sweep", str(tmp_path)], "either --model (with --data) or --sweep"),
        (["--sweep", str(tmp_path), "--data", str(data)], "drop --data"),
        ([], "either --model (with --data) or --sweep"),
    ):
        result = stratad("report", *args, "--out", str(tmp_path / "r2"), "--no-progress")
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1 and len(lines) == 1 and needle in lines[0], result.stderr
