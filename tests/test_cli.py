"""The command line as a user meets it: what each command writes (bad input: tests/test_bad_input.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from stratad.cli import grouped
from tests.clirun import CliResult, error_line, stratad


def run(*args: str) -> CliResult:
    return stratad(*args)


def assert_clean_error(proc: CliResult, needle: str) -> None:
    assert needle in error_line(proc)


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
        "--maps",
        "npy",
        "--no-progress",
    )
    assert pred.returncode == 0, pred.stderr
    npys = sorted(maps.glob("*.png.npy"))
    assert len(npys) == 4 and np.load(npys[0]).shape == (64, 64)
    assert len(list(maps.glob("*.png.overlay.jpg"))) == 4
    rows = [line for line in (maps / "scores.csv").read_text().splitlines() if not line.startswith("#")]
    header = "image,score,map,map_min,map_max,overlay,normalized_score,decision,defect_area,mask"
    assert rows[0] == header and len(rows) == 5
    out = tmp_path / "metrics.json"
    ev = run(
        "evaluate", "--model", str(model), "--data", str(tiny_mvtec), "--json", str(out), "--no-progress"
    )
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads(out.read_text())
    # Bright squares on stripes: every defect outranks every good image and is found where it is.
    assert metrics["image_auroc"] == 1.0 and metrics["f1_max"] == 1.0
    assert metrics["pixel_auroc"] > 0.95 and metrics["aupro_30"] > 0.9
    assert metrics["n_test_images"] == 8 and metrics["detector"] == "patchcore"


def test_select_sweep_analyze_synth_rf(tmp_path: Path) -> None:
    from tests.conftest import make_mvtec

    data = make_mvtec(tmp_path / "data", n_train=16)
    common = ["--nodes", "blocks.1,blocks.2", "--image-size", "64", "-p", "coreset_size=50", "--no-progress"]
    sel = run(
        "select", "--data", str(data), "--defects", "cutpaste", "--out", str(tmp_path / "sel"), "--final",
        "selection", "--folds", "5", *common,
    )  # fmt: skip
    assert sel.returncode == 0, sel.stderr
    selected = json.loads((tmp_path / "sel" / "selected.json").read_text())
    with open(tmp_path / "sel" / "nodes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    best = max(rows, key=lambda r: float(r["p_h"]))["node"]
    default = "blocks.2.1.add+blocks.4.2.add"
    test = selected["default_test"]
    if best == default:  # nothing to test: the default itself won
        assert test is None and selected["node"] == default
    else:  # 1 good + 4 synthetic validation images: too few to test a challenger, the default stays
        assert test["challenger"] == best and test["chosen"] == default and test["resamples"] == 0
        assert selected["node"] == default
        assert f"kept the default {default} over {best}: fewer than 10" in sel.stderr
    assert (tmp_path / "sel" / "model.stratad").is_file()
    assert "final model on 11 of 16 training images" in sel.stderr  # D_T, the paper's protocol
    # 16 good images: D_T 11, D_V 5 = 1 good + 4 synthetic, named and warned about; 5 splits asked for.
    assert "ranked on 5 splits of 1 good + 4 synthetic validation images each (fit on 11)" in sel.stderr
    assert "warning: fewer than 10 good or synthetic validation images per split" in sel.stderr
    assert sorted(p.name for p in (tmp_path / "sel" / "folds").iterdir()) == ["0", "1", "2", "3", "4"]
    # The two nodes asked for, and the detector's default pair as one more candidate.
    assert [r["node"] for r in rows] == ["blocks.1.1.add", "blocks.2.1.add", "blocks.2.1.add+blocks.4.2.add"]
    sw = run(
        "sweep", "--data", str(data), "--out", str(tmp_path / "sweep"), "--no-rf", "--no-default", *common
    )
    assert sw.returncode == 0, sw.stderr
    assert (tmp_path / "sweep" / "nodes.csv").read_text().count("\n") == 3  # header + the 2 nodes
    an = run("analyze", str(tmp_path / "sweep"), "--out", str(tmp_path / "analysis"))
    assert an.returncode == 0, an.stderr
    oracle = json.loads((tmp_path / "analysis" / "oracle.json").read_text())
    with open(tmp_path / "sweep" / "nodes.csv") as handle:
        p_h = [float(r["p_h"]) for r in csv.DictReader(handle)]
    # One category: the best fixed node is the best row, a random node is worth the mean row.
    assert oracle["best_node"]["value"] == pytest.approx(max(p_h), abs=1e-6)
    assert oracle["random"] == pytest.approx(sum(p_h) / len(p_h), abs=1e-6)
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


def test_option_groups_reach_every_group_once_declared() -> None:
    """An option declared by two groups (``--seed``) appears once and reaches both; the command
    receives what each group returns; typer's own runner parses it like the real CLI."""

    def first(seed: Annotated[int, typer.Option()] = 0, size: Annotated[int, typer.Option()] = 8) -> tuple:
        return ("first", seed, size)

    def second(seed: Annotated[int, typer.Option()] = 0) -> tuple:
        return ("second", seed)

    app = typer.Typer()

    @app.command()
    @grouped(a=first, b=second)
    def show(a: tuple, name: Annotated[str, typer.Option()], b: tuple) -> None:
        print(a, name, b)

    @app.command()
    def other() -> None:  # a second command, so typer keeps the command name
        pass

    result = CliRunner().invoke(app, ["show", "--seed", "7", "--size", "3", "--name", "x"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "('first', 7, 3) x ('second', 7)"
    help_text = CliRunner().invoke(app, ["show", "--help"]).output
    assert help_text.count("--seed") == 1


def test_usage_errors_are_one_line_with_the_command_help_named() -> None:
    line = error_line(run("evaluate", "--data", "x"))
    assert line == "error: Missing option '--model' (see `stratad evaluate --help`)"


def test_select_among_sizes_with_pairs_and_a_defect_mixture(tmp_path: Path) -> None:
    from tests.conftest import make_mvtec

    data = make_mvtec(tmp_path / "data", n_train=16)
    sel = run(
        "select", "--data", str(data), "--defects", "simple,cutpaste", "--out", str(tmp_path / "sel"),
        "--sizes", "64,80", "--pairs", "2", "--nodes", "blocks.1,blocks.2,blocks.3", "-p", "coreset_size=40",
        "--final", "all", "--no-progress",
    )  # fmt: skip
    assert sel.returncode == 0, sel.stderr
    top = json.loads((tmp_path / "sel" / "selected.json").read_text())
    from stratad.pipeline import Pipeline
    from stratad.selection.config import candidate_nodes

    model = Pipeline.load(tmp_path / "sel" / "model.stratad")  # the chosen size's node, at that size
    assert model.config.image_size == top["image_size"]
    assert model.config.nodes == candidate_nodes(top["node"])
    assert set(top["per_size"]) == {"64", "80"} and top["image_size"] in (64, 80)
    best = max(top["per_size"].values(), key=lambda c: c["value"])
    assert top["node"] == best["node"] and "per size: 64 px" in sel.stderr
    for size in (64, 80):
        with open(tmp_path / "sel" / f"size_{size}" / "nodes.csv", newline="") as handle:
            names = [r["node"] for r in csv.DictReader(handle)]
        assert len(names) == 3 + 1 + 1  # three nodes, the default pair, one pair of the two best
        stamp = json.loads((tmp_path / "sel" / f"size_{size}" / "sweep.json").read_text())
        assert stamp["defects"] == "simple,cutpaste" and stamp["image_size"] == size
    once = run(
        "select", "--data", str(data), "--out", str(tmp_path / "once"), "--sizes", "64,64", "--nodes",
        "blocks.2", "--final", "none", "--no-progress", "--no-default",
    )  # fmt: skip
    assert once.returncode == 0 and (tmp_path / "once" / "nodes.csv").is_file()  # one size: no size_64/
    bad = run("select", "--data", str(data), "--out", str(tmp_path / "bad"), "--sizes", "64,x")
    assert bad.returncode == 1 and error_line(bad) == "error: --sizes takes whole numbers, got 'x'"
