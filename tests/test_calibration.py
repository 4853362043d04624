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
from stratad.errors import ModelFileError, StratadError
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
    from PIL import Image

    from stratad.data.datasets import record_mask

    out = tmp_path / "pred"
    result = stratad(
        "predict",
        "--model",
        str(calibrated),
        str(data / "test"),
        "--recursive",
        "--out",
        str(out),
        "--maps",
        "npy",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    cal = Pipeline.load(calibrated).calibration_
    assert cal is not None and cal.pixel_threshold is not None
    with open(out / "scores.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    assert len(rows) == 12
    by_hand = {
        "fp": 0,
        "tp": 0,
        "n_good": 0,
        "n_bad": 0,
        "mask_fp": 0,
        "mask_tp": 0,
        "clean_fp": 0,
        "clean": 0,
    }
    for row in rows:
        score = float(row["score"])
        defective = score > cal.image_threshold
        assert row["decision"] == ("defective" if defective else "good")
        assert (float(row["normalized_score"]) > 0.5) == defective
        full = np.load(out / row["map"])
        mask = np.asarray(Image.open(out / row["mask"])) > 0
        # the mask is the pixels over the pixel threshold in an image judged defective, else empty
        assert np.array_equal(mask, (full > cal.pixel_threshold) & defective)
        assert float(row["defect_area"]) == pytest.approx(mask.mean())
        path = Path(row["image"])
        label = path.parent.name != "good"
        truth = record_mask(
            ImageRecord(
                path,
                int(label),
                mask_path=data / "ground_truth" / "spot" / f"{path.stem}_mask.png" if label else None,
            )
        )
        flagged = full > cal.pixel_threshold
        by_hand["fp"] += int((flagged & ~truth).sum())
        by_hand["tp"] += int((flagged & truth).sum())
        by_hand["mask_fp"] += int((mask & ~truth).sum())
        by_hand["mask_tp"] += int((mask & truth).sum())
        by_hand["n_good"] += int((~truth).sum())
        by_hand["n_bad"] += int(truth.sum())
        if not label:
            by_hand["clean_fp"] += int(flagged.sum())
            by_hand["clean"] += flagged.size
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
    pixel = at["pixel"]
    assert (pixel["n_good"], pixel["n_defective"]) == (by_hand["n_good"], by_hand["n_bad"])
    assert pixel["fpr"] == pytest.approx(by_hand["fp"] / by_hand["n_good"])
    assert pixel["tpr"] == pytest.approx(by_hand["tp"] / by_hand["n_bad"])
    assert pixel["fpr_good_images"] == pytest.approx(by_hand["clean_fp"] / by_hand["clean"])
    assert pixel["masks"]["fpr"] == pytest.approx(by_hand["mask_fp"] / by_hand["n_good"])
    assert pixel["masks"]["tpr"] == pytest.approx(by_hand["mask_tp"] / by_hand["n_bad"])


def test_a_labelled_folder_gives_f1_optimal_thresholds(data: Path, tmp_path: Path) -> None:
    from stratad.metrics.image import f1_max
    from stratad.workflows import fit_to_file

    other = make_mvtec(tmp_path / "other", n_train=1, n_good=6, n_bad=6, seed=7)  # images of its own
    val = tmp_path / "val"
    shutil.copytree(other / "test" / "good", val / "good")
    shutil.copytree(other / "test" / "spot", val / "spot")
    shutil.copytree(other / "ground_truth" / "spot", val / "spot" / "masks")
    fitted = fit_to_file(DataSource(root=data), SETTINGS, tmp_path / "f1.stratad", calibrate=str(val))
    cal = fitted.pipeline.calibration_
    assert cal is not None and cal.method == "f1" and cal.n_good == 6 and cal.n_defective == 6
    assert fitted.n_fitted == 24  # every training image: the validation folder is separate
    scores = fitted.pipeline.predict(sorted((val / "good").glob("*.png")) + sorted(val.glob("spot/*.png")))
    labels = np.array([0] * 6 + [1] * 6)
    assert cal.image_f1 == pytest.approx(f1_max(labels, scores.image_scores))
    assert cal.pixel_threshold is not None and cal.pixel_f1 is not None and cal.pixel_f1 > 0.5
    # the stored pixel threshold, applied as every command applies it (pixels over it in images judged
    # defective), gives the stored F1
    from stratad.data.datasets import record_mask

    truth = np.concatenate(
        [np.zeros(6 * 64 * 64, bool)]
        + [
            record_mask(ImageRecord(p, 1, mask_path=val / "spot" / "masks" / f"{p.stem}_mask.png")).ravel()
            for p in sorted(val.glob("spot/*.png"))
        ]
    )
    judged = cal.decide(scores.image_scores)
    flagged = np.concatenate(
        [(cal.mask(scores.map_at_original_size(i)) & judged[i]).ravel() for i in range(12)]
    )
    tp = int((flagged & truth).sum())
    assert 2 * tp / (int(flagged.sum()) + int(truth.sum())) == pytest.approx(cal.pixel_f1, abs=1e-12)
    # a folder of the dataset's own images (also copied, under other names), or one without
    # defects, is refused before any fitting
    copied = tmp_path / "copied"
    shutil.copytree(data / "test" / "good", copied / "good")
    for i, image in enumerate(sorted((data / "test" / "spot").glob("*.png"))):
        (copied / "scratch").mkdir(exist_ok=True)
        shutil.copy(image, copied / "scratch" / f"renamed_{i}.png")
    for folder, needle in (
        (data / "test", "images of the test split"),
        (copied, "12 images of the test split"),
        (val / "good", "no good/ folder"),
    ):
        with pytest.raises(StratadError, match=needle):
            fit_to_file(DataSource(root=data), SETTINGS, tmp_path / "x.stratad", calibrate=str(folder))
    only_good = tmp_path / "only_good"
    shutil.copytree(val / "good", only_good / "good")
    with pytest.raises(StratadError, match="only good images"):
        fit_to_file(DataSource(root=data), SETTINGS, tmp_path / "x.stratad", calibrate=str(only_good))


def test_evaluating_on_images_the_model_has_seen_is_refused(tmp_path: Path) -> None:
    from stratad.workflows import evaluate_to_json, fit_to_file

    cat = make_mvtec(tmp_path / "src", n_train=40, n_good=0, n_bad=4)
    plain = tmp_path / "plain"
    shutil.copytree(cat / "train" / "good", plain / "good")
    shutil.copytree(cat / "test" / "spot", plain / "spot")
    shutil.copytree(cat / "ground_truth" / "spot", plain / "spot" / "masks")
    model = tmp_path / "m.stratad"
    fit_to_file(DataSource(root=plain, seed=0), SETTINGS, model, calibrate="fpr=0.2", holdout=0.25)
    assert set(Pipeline.load(model).seen_images_) == {"fitted", "calibration"}
    evaluate_to_json(model, DataSource(root=plain, seed=0))  # the fit's own split: fine
    copy = tmp_path / "copy"
    shutil.copytree(plain, copy)  # the same images under other paths
    for root in (plain, copy):
        with pytest.raises(StratadError, match=r"fitted this model|calibrated this model's thresholds"):
            evaluate_to_json(model, DataSource(root=root, seed=1))
    plain_model = tmp_path / "plain.stratad"
    fit_to_file(DataSource(root=plain, seed=0), SETTINGS, plain_model)  # uncalibrated: fitted images only
    with pytest.raises(StratadError, match="fitted this model"):
        evaluate_to_json(plain_model, DataSource(root=copy, seed=1))


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
    # the same report again is fine; another model's report in that folder is refused, untouched
    again = stratad(
        "report", "--model", str(calibrated), "--data", str(data), "--out", str(report), "--no-progress"
    )
    assert again.returncode == 0, again.stderr
    from stratad.workflows import fit_to_file

    other = tmp_path / "other.stratad"
    fit_to_file(DataSource(root=data), SETTINGS, other)  # another model: uncalibrated
    before = (report / "index.html").read_bytes()
    refused = stratad(
        "report", "--model", str(other), "--data", str(data), "--out", str(report), "--no-progress"
    )
    assert refused.returncode == 1 and "holds the report of another model or data" in refused.stderr
    moved = stratad(
        "report",
        "--model",
        str(calibrated),
        "--data",
        str(data),
        "--seed",
        "3",
        "--out",
        str(report),
        "--no-progress",
    )
    assert moved.returncode == 1 and "another model or data" in moved.stderr
    assert (report / "index.html").read_bytes() == before
    for args, needle in (
        (["--model", str(calibrated)], "--model needs --data"),
        (["--model", str(calibrated), "--sweep", str(tmp_path)], "either --model (with --data) or --sweep"),
        (["--sweep", str(tmp_path), "--data", str(data)], "drop --data"),
        ([], "either --model (with --data) or --sweep"),
    ):
        result = stratad("report", *args, "--out", str(tmp_path / "r2"), "--no-progress")
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1 and len(lines) == 1 and needle in lines[0], result.stderr


def test_an_exported_onnx_model_carries_and_applies_the_thresholds(
    data: Path, calibrated: Path, tmp_path: Path
) -> None:
    onnx = tmp_path / "m.onnx"
    assert stratad("export", "--model", str(calibrated), "--out", str(onnx)).returncode == 0
    rows = {}
    for model in (calibrated, onnx):
        out = tmp_path / model.suffix.strip(".")
        result = stratad(
            "predict", "--model", str(model), str(data / "test" / "spot"), "--out", str(out), "--no-progress"
        )
        assert result.returncode == 0, result.stderr
        with open(out / "scores.csv", encoding="utf-8") as handle:
            rows[model.suffix] = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    assert (
        [r["decision"] for r in rows[".onnx"]]
        == [r["decision"] for r in rows[".stratad"]]
        == ["defective"] * 6
    )
    for a, b in zip(rows[".onnx"], rows[".stratad"], strict=True):
        assert float(a["score"]) == pytest.approx(float(b["score"]), rel=1e-4)
        assert float(a["defect_area"]) == pytest.approx(float(b["defect_area"]), abs=0.01)
