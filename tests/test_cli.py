"""The command line as a user meets it: outputs on success, one clear line on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stratad.cli", *args], capture_output=True, text=True, timeout=600
    )


def assert_clean_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert proc.stderr.rstrip().endswith(errors[0]), proc.stderr


def test_fit_predict_evaluate_end_to_end(tiny_mvtec: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.stratad"
    fit = run(
        "fit",
        "--data",
        str(tiny_mvtec),
        "--dataset",
        "mvtec",
        "--nodes",
        "blocks.2,blocks.3",
        "--image-size",
        "64",
        "-p",
        "coreset_size=100",
        "--out",
        str(model),
        "--no-progress",
    )
    assert fit.returncode == 0, fit.stderr
    assert model.is_file()
    maps = tmp_path / "maps"
    pred = run(
        "predict",
        "--model",
        str(model),
        str(tiny_mvtec / "test" / "spot"),
        "--out",
        str(maps),
        "--no-progress",
    )
    assert pred.returncode == 0, pred.stderr
    npys = sorted(maps.glob("*.png.npy"))
    assert len(npys) == 4 and np.load(npys[0]).shape == (64, 64)
    assert len(list(maps.glob("*.png.overlay.png"))) == 4
    rows = [line for line in (maps / "scores.csv").read_text().splitlines() if not line.startswith("#")]
    assert rows[0] == "image,score,map,overlay" and len(rows) == 5
    out = tmp_path / "metrics.json"
    ev = run(
        "evaluate", "--model", str(model), "--data", str(tiny_mvtec), "--json", str(out), "--no-progress"
    )
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads(out.read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro_30", "f1_max", "p_h"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["n_test_images"] == 8 and metrics["detector"] == "patchcore"


def test_bad_input_is_one_line(tiny_mvtec: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.stratad"
    base = ["fit", "--out", str(model), "--image-size", "64", "--no-progress"]
    assert_clean_error(run(*base, "--data", str(tmp_path / "nowhere")), "not found")
    assert_clean_error(run(*base, "--data", str(tiny_mvtec), "--backbone", "resnet9000"), "resnet9000")
    assert_clean_error(run(*base, "--data", str(tiny_mvtec), "--nodes", "blocks.42"), "blocks.42")
    assert_clean_error(run(*base, "--data", str(tiny_mvtec), "-p", "coreset_size=lots"), "coreset_size")
    assert not model.exists()
    # A corrupt image in the training folder: named in the message, no model file.
    (tiny_mvtec / "train" / "good" / "zz_broken.png").write_bytes(b"\x89PNG broken")
    assert_clean_error(run(*base, "--data", str(tiny_mvtec)), "zz_broken.png")
    assert not model.exists()
    # A mask whose size differs from its image.
    (tiny_mvtec / "train" / "good" / "zz_broken.png").unlink()
    fit = run(*base, "--data", str(tiny_mvtec), "-p", "coreset_size=50")
    assert fit.returncode == 0, fit.stderr
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tiny_mvtec / "ground_truth" / "spot" / "000_mask.png")
    assert_clean_error(
        run("evaluate", "--model", str(model), "--data", str(tiny_mvtec), "--no-progress"), "000_mask.png"
    )
    spot = str(tiny_mvtec / "test" / "spot")
    assert_clean_error(
        run("predict", "--model", str(tmp_path / "none.stratad"), spot, "--out", str(tmp_path / "o")),
        "not found",
    )
    assert_clean_error(
        run("predict", "--model", str(model), str(tmp_path), "--out", str(tmp_path / "o")), "no images"
    )


def test_select_sweep_analyze_synth_rf(tmp_path: Path) -> None:
    from tests.conftest import make_mvtec

    data = make_mvtec(tmp_path / "data", n_train=16)
    common = ["--nodes", "blocks.1,blocks.2", "--image-size", "64", "-p", "coreset_size=50", "--no-progress"]
    sel = run("select", "--data", str(data), "--defects", "cutpaste", "--out", str(tmp_path / "sel"), *common)
    assert sel.returncode == 0, sel.stderr
    chosen = json.loads((tmp_path / "sel" / "selected.json").read_text())["node"]
    assert chosen in {"blocks.1.1.add", "blocks.2.1.add"}
    assert (tmp_path / "sel" / "model.stratad").is_file()
    assert (tmp_path / "sel" / "nodes.csv").read_text().count("\n") == 3
    sw = run("sweep", "--data", str(data), "--out", str(tmp_path / "sweep"), "--no-rf", *common)
    assert sw.returncode == 0, sw.stderr
    an = run("analyze", str(tmp_path / "sweep"), "--out", str(tmp_path / "analysis"))
    assert an.returncode == 0, an.stderr
    oracle = json.loads((tmp_path / "analysis" / "oracle.json").read_text())
    assert 0.0 <= oracle["random"] <= oracle["best_node"]["value"] <= 1.0
    assert (tmp_path / "analysis" / "best_nodes.png").is_file()
    syn = run(
        "synth",
        "--data",
        str(data),
        "--kind",
        "nsa",
        "--n",
        "3",
        "--image-size",
        "64",
        "--out",
        str(tmp_path / "syn"),
    )
    assert syn.returncode == 0, syn.stderr
    assert len(list((tmp_path / "syn" / "masks").glob("*.png"))) == 3
    rf = run(
        "rf",
        "--backbone",
        "resnet18",
        "--weights",
        "random",
        "--size",
        "64",
        "--nodes",
        "layer1,layer3",
        "--csv",
        str(tmp_path / "rf.csv"),
    )
    assert rf.returncode == 0, rf.stderr
    values = [float(line.split(",")[1]) for line in (tmp_path / "rf.csv").read_text().splitlines()[1:]]
    assert len(values) == 2 and 0 < values[0] < values[1] <= 1
    assert_clean_error(
        run("select", "--data", str(data), "--defects", "scratches", "--out", str(tmp_path / "x")),
        "scratches",
    )
    for option, value, message in (("--workers", "-1", "workers"), ("--memory-mb", "-5", "memory budget")):
        refused = run("sweep", "--data", str(data), "--out", str(tmp_path / "y"), option, value)
        assert_clean_error(refused, message)
        assert not (tmp_path / "y").exists()  # refused before anything was written
