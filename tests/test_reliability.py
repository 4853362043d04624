"""No silent wrong result: one test per defect of the reliability issue (numbered as there).

The messages users get for each bad input are in ``tests/test_bad_input.py``; these tests check what
happens on the way: what is read, written, resumed and refused.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from stratad.data import load_dataset, read_image_rgb, read_mask
from stratad.errors import ImageReadError, MaskError, ModelFileError, StratadError
from stratad.evaluation import evaluate_pipeline
from stratad.export.io import load_tensors, save_tensors
from stratad.pipeline import Pipeline
from tests.clirun import error_line, stratad
from tests.conftest import make_mvtec

SMALL = ["--image-size", "64", "--no-progress"]


def _pipe(**kw: object) -> Pipeline:
    args: dict = {"nodes": ["blocks.2"], "image_size": 64, "detector_params": {"coreset_size": 50}}
    args.update(kw)
    return Pipeline(**args)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(line for line in handle if not line.startswith("#")))


# -- 1. resumable runs that cannot mix settings --
def test_1_typo_in_nodes_leaves_no_stamp_behind(tmp_path: Path) -> None:
    data = make_mvtec(tmp_path / "d", n_train=16)
    common = ["select", "--data", str(data), "--out", str(tmp_path / "sel"), "-p", "coreset_size=30", *SMALL]
    assert "blocks.42" in error_line(stratad(*common, "--nodes", "blocks.42", "--no-rf"))
    assert not (tmp_path / "sel" / "sweep.json").exists()
    fixed = stratad(*common, "--nodes", "blocks.2", "--no-rf", "--workers", "1", "--final", "none")
    assert fixed.returncode == 0, fixed.stderr


def test_1_stamp_names_each_setting_that_changes_a_row(tmp_path: Path) -> None:
    from stratad.selection.sweep import EvalSet, SweepConfig, _check_resumable, sweep_stamp

    class Backbone:
        model = torch.nn.Linear(2, 2)

    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    evaluation = EvalSet(images, np.array([0, 0, 1, 1]), [np.zeros((8, 8), bool)] * 4)
    base = SweepConfig(detector_params={"coreset_size": 10})
    _check_resumable(tmp_path, sweep_stamp(base, images, evaluation, Backbone(), {"defects": "nsa"}))
    changes = {
        "fpr_limit": {"fpr_limit": 0.1},
        "exact": {"exact": True},
        "pixel_stride": {"pixel_stride": 3},
        "image_size": {"image_size": 128},
        "backbone": {"backbone": "resnet18"},
        "seed": {"seed": 1},
        "bit_depth": {"bit_depth": 12},
        "the detector options": {"detector_params": {"coreset_size": 11}},
    }
    for needle, change in changes.items():
        cfg = SweepConfig(**{**base.__dict__, **change})
        with pytest.raises(StratadError, match=needle):
            _check_resumable(tmp_path, sweep_stamp(cfg, images, evaluation, Backbone(), {"defects": "nsa"}))
    for needle, stamp in {
        "defects": sweep_stamp(base, images, evaluation, Backbone(), {"defects": "simple"}),
        "the data": sweep_stamp(base, images + 1, evaluation, Backbone(), {"defects": "nsa"}),
        "the backbone weights": sweep_stamp(
            base, images, evaluation, type("B", (), {"model": torch.nn.Linear(2, 3)})(), {"defects": "nsa"}
        ),
    }.items():
        with pytest.raises(StratadError, match=needle):
            _check_resumable(tmp_path, stamp)
    # Run-time knobs change no row: resuming with more workers or another batch size is fine.
    same = SweepConfig(**{**base.__dict__, "workers": 3, "batch_size": 5, "memory_budget_mb": 64})
    _check_resumable(tmp_path, sweep_stamp(same, images, evaluation, Backbone(), {"defects": "nsa"}))


def test_1_killed_select_resumes_to_identical_rows(tmp_path: Path) -> None:
    from stratad.selection import SweepConfig, select_features

    split = load_dataset(make_mvtec(tmp_path / "d", n_train=16), "mvtec")
    cfg = SweepConfig(
        nodes=["blocks.1", "blocks.2", "blocks.3"],
        detector_params={"coreset_size": 30},
        image_size=64,
        workers=1,
    )
    whole = select_features(split.train, cfg, tmp_path / "whole", "cutpaste")

    def kill_after_first_node(label: str, done: int, total: int) -> None:
        if done >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        select_features(split.train, cfg, tmp_path / "resumed", "cutpaste", progress=kill_after_first_node)
    assert len(_rows(tmp_path / "resumed" / "nodes.csv")) == 1
    resumed = select_features(split.train, cfg, tmp_path / "resumed", "cutpaste")

    def metrics(path: Path) -> list[dict[str, str]]:
        return [{k: v for k, v in r.items() if k not in ("fit_s", "score_s")} for r in _rows(path)]

    assert metrics(tmp_path / "resumed" / "nodes.csv") == metrics(tmp_path / "whole" / "nodes.csv")
    assert resumed.node == whole.node and resumed.value == whole.value


# -- 2. masks --
def test_2_missing_mask_is_an_error_or_leaves_the_pixel_metrics(tmp_path: Path) -> None:
    data = make_mvtec(tmp_path / "d")
    split = load_dataset(data, "mvtec")
    pipe = _pipe().fit(split.train)
    full, _ = evaluate_pipeline(pipe, split.test)
    (data / "ground_truth" / "spot" / "001_mask.png").unlink()
    holed = load_dataset(data, "mvtec")
    with pytest.raises(MaskError, match=r"001\.png"):
        evaluate_pipeline(pipe, holed.test)
    excluded, _ = evaluate_pipeline(pipe, holed.test, missing_masks="exclude")
    without = [r for r in holed.test if not (r.label and r.mask_path is None)]
    reference, _ = evaluate_pipeline(pipe, without)
    assert excluded["n_excluded_from_pixel_metrics"] == 1
    assert excluded["image_auroc"] == full["image_auroc"]  # the image still counts for image metrics
    for key in ("pixel_auroc", "aupro_30", "pixel_f1_max"):
        assert excluded[key] == reference[key]


def test_2_mask_with_the_image_file_name_and_coloured_masks(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    for sub in ("good", "scratch/masks"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "good" / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "scratch" / "x.jpg")
    red = np.zeros((32, 32, 3), np.uint8)
    red[4:12, 8:20, 0] = 255  # red on black: grey value 76 would be lost by a grey conversion
    Image.fromarray(red).save(root / "scratch" / "masks" / "x.jpg", quality=95)
    split = load_dataset(root, "folder")
    defect = next(r for r in split.test if r.label)
    assert defect.mask_path == root / "scratch" / "masks" / "x.jpg"
    mask = read_mask(defect.mask_path)
    assert mask[4:12, 8:20].all() and mask.sum() == 8 * 12
    binary = np.zeros((8, 8), np.uint8)
    binary[2:4, 2:5] = 1  # a 0/1 label image
    Image.fromarray(binary).save(tmp_path / "label.png")
    assert read_mask(tmp_path / "label.png").sum() == 6


# -- 3. bit depth --
def _as_12_bit(image: np.ndarray) -> np.ndarray:
    return np.rint(image.astype(np.float64) * 4095 / 255).astype(np.uint16)


def test_3_twelve_bit_images_score_like_their_eight_bit_content(tmp_path: Path) -> None:
    from stratad.data.io import detect_bit_depth

    eight = make_mvtec(tmp_path / "eight")
    twelve = tmp_path / "twelve" / "widget"
    shutil.copytree(eight, twelve)
    for png in [*twelve.glob("train/good/*.png"), *twelve.glob("test/*/*.png")]:
        grey = np.asarray(Image.open(png))[..., 0]
        Image.fromarray(_as_12_bit(grey)).save(png)  # 16-bit grey PNG, 12-bit data
    assert Image.open(next(twelve.glob("train/good/*.png"))).mode == "I;16"
    a, b = load_dataset(eight, "mvtec"), load_dataset(twelve, "mvtec")
    assert detect_bit_depth(r.path for r in b.train) == 12
    pipe8, pipe12 = _pipe().fit(a.train), _pipe().fit(b.train)
    assert pipe12.config.bit_depth == 12 and pipe8.config.bit_depth == 8
    np.testing.assert_array_equal(pipe8.predict(a.test).image_scores, pipe12.predict(b.test).image_scores)
    pipe12.save(tmp_path / "m.stratad")
    assert Pipeline.load(tmp_path / "m.stratad").config.bit_depth == 12


def test_3_colour_16_bit_and_float_images(tmp_path: Path) -> None:
    from stratad.data.io import detect_bit_depth

    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "rgb48.png"), _as_12_bit(rgb)[..., ::-1])  # 16-bit RGB, 12-bit data
    assert detect_bit_depth([tmp_path / "rgb48.png"]) == 12
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "rgb48.png", 12), rgb)
    Image.fromarray(rgb[..., 0].astype(np.float32) / 255).save(tmp_path / "unit.tif")
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "unit.tif")[..., 1], rgb[..., 0])
    Image.fromarray(np.full((4, 4), 2.0, np.float32)).save(tmp_path / "wide.tif")
    with pytest.raises(ImageReadError, match=r"values in \[2, 2\]"):
        read_image_rgb(tmp_path / "wide.tif")


# -- 4. predict outputs --
def test_4_outputs_are_unique_streamed_and_tied_to_their_model(tmp_path: Path) -> None:
    data = make_mvtec(tmp_path / "d")
    model = tmp_path / "m.stratad"
    _pipe(batch_size=2).fit(load_dataset(data, "mvtec").train).save(model)
    images = tmp_path / "in"
    images.mkdir()
    spot = sorted((data / "test" / "spot").glob("*.png"))
    shutil.copy(spot[0], images / "a.png")
    Image.open(spot[1]).convert("RGB").save(images / "a.jpg")
    Image.open(spot[2]).save(images / "b.png")
    out = tmp_path / "out"
    assert (
        stratad("predict", "--model", str(model), str(images), "--out", str(out), "--maps", "npy").returncode
        == 0
    )
    rows = _rows(out / "scores.csv")
    assert [Path(r["image"]).name for r in rows] == ["a.jpg", "a.png", "b.png"]
    assert sorted(p.name for p in out.glob("*.npy")) == ["a.jpg.npy", "a.png.npy", "b.png.npy"]
    assert sorted(p.name for p in out.glob("*.overlay.jpg")) == [
        "a.jpg.overlay.jpg",
        "a.png.overlay.jpg",
        "b.png.overlay.jpg",
    ]
    header = [line for line in (out / "scores.csv").read_text().splitlines() if line.startswith("#")]
    from stratad.workflows import file_sha256

    assert f"sha256={file_sha256(model)}" in header[1]
    # Full precision: the written score is the float32 score exactly.
    scores = Pipeline.load(model).predict(sorted(images.iterdir())).image_scores
    assert [np.float32(float(r["score"])) for r in rows] == list(scores)
    # A crash keeps what was scored: the 4th image is corrupt, the 3 before it are on disk.
    (images / "c.png").write_bytes(b"\x89PNG not really")
    crashed = tmp_path / "crashed"
    assert "c.png" in error_line(
        stratad("predict", "--model", str(model), str(images), "--out", str(crashed))
    )
    assert [Path(r["image"]).name for r in _rows(crashed / "scores.csv")] == ["a.jpg", "a.png", "b.png"]


# -- 5. file names that are not UTF-8 --
def test_5_non_utf8_file_name(tmp_path: Path) -> None:
    data = make_mvtec(tmp_path / "d")
    model = tmp_path / "m.stratad"
    _pipe().fit(load_dataset(data, "mvtec").train).save(model)
    folder = tmp_path / "in"
    folder.mkdir()
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.png")
    try:
        shutil.copy(next((data / "test" / "spot").glob("*.png")), raw)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stratad",
            "predict",
            "--model",
            str(model),
            str(folder),
            "--out",
            str(out),
            "--maps",
            "npy",
        ],
        capture_output=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(os.path.join(os.fsencode(out), b"caf\xe9.png.overlay.jpg"))
    assert os.path.exists(os.path.join(os.fsencode(out), b"caf\xe9.png.npy"))
    assert "caf\\xe9.png" in (out / "scores.csv").read_text(encoding="utf-8")


# -- 6. devices and options, checked before any work --
def test_6_model_fitted_on_a_gpu_loads_on_the_cpu(tmp_path: Path) -> None:
    data = make_mvtec(tmp_path / "d")
    _pipe().fit(load_dataset(data, "mvtec").train).save(tmp_path / "m.stratad")
    tensors, meta = load_tensors(tmp_path / "m.stratad")
    del meta["tensors_sha256"], meta["format_version"]
    meta["config"]["device"] = "cuda"
    save_tensors(tmp_path / "gpu.stratad", tensors, meta)
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    pipe = Pipeline.load(tmp_path / "gpu.stratad")
    assert pipe.config.device == "cpu"
    assert pipe.predict(load_dataset(data, "mvtec").test[:2]).image_scores.shape == (2,)


def test_6_options_fail_before_any_extraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stratad.backbones import extractor

    def no_extraction(*args: object, **kwargs: object) -> None:
        raise AssertionError("features were extracted before the options were checked")

    monkeypatch.setattr(extractor.NodeExtractor, "forward", no_extraction)
    data = str(make_mvtec(tmp_path / "d", n_train=16))
    for option in ("projection_dim=-3", "node_dim=-2", "target_dim=-1", "coreset_fraction=1.5"):
        name = option.split("=")[0]
        for command in ("fit", "select", "sweep"):
            args = [command, "--data", data, "--out", str(tmp_path / "o"), "-p", option, *SMALL]
            assert name in error_line(stratad(*args))
    synth = tmp_path / "synth"
    error_line(stratad("synth", "--data", data, "--out", str(synth), "--image-size", "0"))
    assert not synth.exists()


# -- 7. model files: a fuzzed file is refused or behaves exactly as the original --
def test_7_fuzzed_model_files_give_one_error_type(tmp_path: Path) -> None:
    data = make_mvtec(tmp_path / "d")
    split = load_dataset(data, "mvtec")
    original = tmp_path / "m.stratad"
    _pipe().fit(split.train).save(original)
    expected = Pipeline.load(original).predict(split.test[:2]).image_scores
    blob = original.read_bytes()
    header_end = 8 + int.from_bytes(blob[:8], "little")
    rng = np.random.default_rng(0)
    refused = 0
    for trial in range(60):
        data_bytes = bytearray(blob)
        kind = trial % 3
        if kind == 0:
            data_bytes = data_bytes[: int(rng.integers(0, len(blob)))]
        elif kind == 1:
            for _ in range(int(rng.integers(1, 4))):
                where = int(rng.integers(0, len(blob)))
                data_bytes[where] ^= int(rng.integers(1, 256))
        else:  # edit the JSON header: a flip inside it
            where = int(rng.integers(8, header_end))
            data_bytes[where] ^= 1 << int(rng.integers(0, 7))
        target = tmp_path / f"fuzz{trial}.stratad"
        target.write_bytes(bytes(data_bytes))
        try:
            loaded = Pipeline.load(target)
        except ModelFileError:
            refused += 1
            continue
        np.testing.assert_array_equal(loaded.predict(split.test[:2]).image_scores, expected)
    assert refused >= 50  # the few that load hit padding or an equivalent header byte


# -- 8. outputs are checked before scoring --
def test_8_outputs_checked_before_scoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_mvtec(tmp_path / "d")
    model = tmp_path / "m.stratad"
    _pipe().fit(load_dataset(data, "mvtec").train).save(model)

    def no_scoring(*args: object, **kwargs: object) -> None:
        raise AssertionError("scored before checking the outputs")

    monkeypatch.setattr(Pipeline, "predict", no_scoring)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    spot = str(data / "test" / "spot")
    assert "is a file" in error_line(stratad("predict", "--model", str(model), spot, "--out", str(blocker)))
    assert "cannot" in error_line(
        stratad("predict", "--model", str(model), spot, "--out", str(blocker / "sub"))
    )
    ev = ["evaluate", "--model", str(model), "--data", str(data)]
    assert "is a folder" in error_line(stratad(*ev, "--json", str(tmp_path)))
    assert "cannot write" in error_line(stratad(*ev, "--json", str(blocker / "m.json")))


# -- 9. temp files and file modes --
def test_9_stale_temps_are_removed_and_files_are_0644(tmp_path: Path) -> None:
    target = tmp_path / "m.stratad"
    dead = tmp_path / ".m.stratad.stratad-999999999.x1.tmp"  # no such process
    alive = tmp_path / ".m.stratad.stratad-1.x2.tmp"  # pid 1 runs: a concurrent save, kept
    other = tmp_path / ".n.stratad.stratad-999999999.x3.tmp"  # another target's, kept
    for stale in (dead, alive, other):
        stale.write_bytes(b"partial")
    previous = os.umask(0o022)
    try:
        save_tensors(target, {"a": torch.zeros(2)}, {"kind": "x"})
    finally:
        os.umask(previous)
    assert not dead.exists() and alive.exists() and other.exists()
    assert (target.stat().st_mode & 0o777) == 0o644


# -- 10. a score depends on its image only --
@pytest.mark.parametrize("detector", ["patchcore", "padim", "gaussian", "dn2", "spade", "gde"])
def test_10_score_alone_equals_score_in_a_batch(tiny_mvtec: Path, detector: str) -> None:
    from stratad.detectors import detector_class

    split = load_dataset(tiny_mvtec, "mvtec")
    params = {"coreset_size": 50} if detector == "patchcore" else {}
    nodes = {"padim": ["blocks.1", "blocks.2"], "gaussian": ["blocks.3", "blocks.5"]}.get(detector)
    pipe = Pipeline(
        nodes=nodes or (["blocks.2"] if detector_class(detector).localizes else None),
        detector=detector,
        detector_params=params,
        image_size=64,
        batch_size=3,
    )
    pipe.fit(split.train)
    together = pipe.predict(split.test)
    for i in (0, 4, len(split.test) - 1):
        alone = pipe.predict(split.test[i : i + 1])
        assert alone.image_scores[0] == together.image_scores[i]
        if together.maps is not None:
            assert alone.maps is not None
            np.testing.assert_array_equal(alone.maps[0], together.maps[i])


def test_4_map_formats_recursive_folders_and_png16_round_trip(tmp_path: Path) -> None:
    from stratad.workflows import read_png16_map

    data = make_mvtec(tmp_path / "d")
    model = tmp_path / "m.stratad"
    _pipe().fit(load_dataset(data, "mvtec").train).save(model)
    test = str(data / "test")  # MVTec's test/<defect>/000.png: the same names in two sub-folders
    outs = {fmt: tmp_path / fmt for fmt in ("png16", "npy", "none")}
    for fmt, out in outs.items():
        args = ["predict", "--model", str(model), test, "--out", str(out), "--recursive", "--maps", fmt]
        done = stratad(*args, *(["--overlays", "none"] if fmt == "none" else []))
        assert done.returncode == 0, done.stderr
    rows = {fmt: _rows(out / "scores.csv") for fmt, out in outs.items()}
    assert [r["image"] for r in rows["png16"]] == [r["image"] for r in rows["npy"]]
    assert len(rows["png16"]) == 8 and (outs["png16"] / "good" / "000.png.map.png").is_file()
    assert (outs["png16"] / "spot" / "000.png.map.png").is_file()  # same file name, no collision
    for png_row, npy_row in zip(rows["png16"], rows["npy"], strict=True):
        exact = np.load(outs["npy"] / npy_row["map"])
        low, high = float(png_row["map_min"]), float(png_row["map_max"])
        decoded = read_png16_map(outs["png16"] / png_row["map"], low, high)
        step = (high - low) / 65535
        assert decoded.shape == exact.shape and np.abs(decoded - exact).max() <= step / 2 + 1e-6 * high
        assert png_row["score"] == npy_row["score"]
    assert all(r["map"] == "" and r["overlay"] == "" for r in rows["none"])
    assert not list(outs["none"].rglob("*.png")) and not list(outs["none"].rglob("*.npy"))
    png_bytes = sum(p.stat().st_size for p in outs["png16"].rglob("*.map.png"))
    npy_bytes = sum(p.stat().st_size for p in outs["npy"].rglob("*.npy"))
    assert png_bytes < npy_bytes


def test_4_scores_name_overlays_only_once_they_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped while drawing overlays keeps every scored row, with no overlay named; a whole
    run names every overlay, and each named file exists."""
    import stratad.workflows.predict as predict

    data = make_mvtec(tmp_path / "d")
    model = tmp_path / "m.stratad"
    _pipe().fit(load_dataset(data, "mvtec").train).save(model)
    predict.predict_to_folder(model, data / "test" / "spot", tmp_path / "whole")
    rows = _rows(tmp_path / "whole" / "scores.csv")
    assert len(rows) == 4 and all((tmp_path / "whole" / r["overlay"]).is_file() for r in rows)

    def stop(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "_write_overlays", stop)
    with pytest.raises(KeyboardInterrupt):
        predict.predict_to_folder(model, data / "test" / "spot", tmp_path / "stopped")
    stopped = _rows(tmp_path / "stopped" / "scores.csv")
    assert [r["score"] for r in stopped] == [r["score"] for r in rows]
    assert all(r["overlay"] == "" for r in stopped)
