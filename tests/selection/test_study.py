"""`stratad study`: the grid on local processes and on a local Ray instance gives one identical table,
which `analyze` reads; a stopped study resumes from its task folders."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
from tests.conftest import make_mvtec

from stratad.errors import StratadError
from stratad.selection import SweepConfig
from stratad.selection.study import StudyConfig, plan_study, run_study


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for k, name in enumerate(("alpha", "beta")):
        (make_mvtec(root, n_train=6, n_good=2, n_bad=2, size=64, seed=k)).rename(root / name)
    return root


def _cfg(root: Path) -> StudyConfig:
    return StudyConfig(
        root=root,
        backbones=["efficientnet_lite0"],
        sizes=[64, 96],
        nodes=["blocks.1.1.add", "blocks.2.1.add", "blocks.3.0.conv_pwl"],
        chunk_nodes=2,
        sweep=SweepConfig(weights="random", detector_params={"coreset_size": 30}, max_grid=16),
        rf=False,
    )


def _table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_grid_is_cut_into_tasks_in_grid_order(tmp_path: Path) -> None:
    tasks = plan_study(_cfg(_root(tmp_path)))
    assert [(t.category, t.image_size, t.chunk, len(t.nodes)) for t in tasks] == [
        ("alpha", 64, 0, 2),
        ("alpha", 64, 1, 1),
        ("alpha", 96, 0, 2),
        ("alpha", 96, 1, 1),
        ("beta", 64, 0, 2),
        ("beta", 64, 1, 1),
        ("beta", 96, 0, 2),
        ("beta", 96, 1, 1),
    ]
    assert all(t.memory_bytes > 1.5 * 2**30 for t in tasks)
    stages = plan_study(StudyConfig(root=tmp_path / "data", nodes=["stages"], sizes=[64], chunk_nodes=99))
    assert len(stages[0].nodes) == 7  # Lite0's stage ends blocks.0 ... blocks.6
    with pytest.raises(StratadError, match="no category gamma"):
        plan_study(StudyConfig(root=tmp_path / "data", categories=["gamma"]))


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray")
def test_processes_and_local_ray_give_the_same_table_and_analyze_reads_it(tmp_path: Path) -> None:
    from stratad.workflows import analyze_sweeps

    root = _root(tmp_path)
    cfg = _cfg(root)
    seen: list[int] = []
    rows = run_study(
        cfg, tmp_path / "processes", workers=2, progress=lambda label, done, total: seen.append(done)
    )
    assert seen == list(range(1, 9)) and len(rows) == 2 * 2 * 3
    run_study(cfg, tmp_path / "ray", ray_address="local")
    processes, ray = _table(tmp_path / "processes" / "study.csv"), _table(tmp_path / "ray" / "study.csv")
    assert processes == ray and len(processes) == 12
    assert {(r["category"], r["image_size"]) for r in processes} == {
        (c, s) for c in ("alpha", "beta") for s in ("64", "96")
    }
    table = analyze_sweeps([tmp_path / "ray"], tmp_path / "analysis")
    assert set(table["best_node_per_category_by_extractor"]) == {
        "efficientnet_lite0@64",
        "efficientnet_lite0@96",
    }
    assert table["base_size"] == 64 and set(table["tasks"]) == {"classification", "localization", "p_h"}


def test_a_stopped_study_resumes_from_its_task_folders(tmp_path: Path) -> None:
    root = _root(tmp_path)
    cfg = _cfg(root)
    cfg.sizes = [64]
    first = run_study(cfg, tmp_path / "s", workers=1)
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "s").rglob("nodes.csv")}
    (tmp_path / "s" / "study.csv").unlink()  # the driver died before writing its table
    again = run_study(cfg, tmp_path / "s", workers=1)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "s").rglob("nodes.csv")} == done  # nothing redone
    cfg.sizes = [96]
    with pytest.raises(StratadError, match="other settings"):
        run_study(cfg, tmp_path / "s", workers=1)


@pytest.mark.parametrize("ray", [None, "local"])
def test_a_failing_task_is_one_error_naming_it(tmp_path: Path, ray: str | None) -> None:
    if ray and importlib.util.find_spec("ray") is None:
        pytest.skip("needs ray")
    root = _root(tmp_path)
    for image in (root / "beta" / "test").rglob("*.png"):
        image.write_bytes(b"not an image")
    cfg = _cfg(root)
    cfg.sizes = [64]
    cfg.nodes = ["blocks.2.1.add"]
    with pytest.raises(
        StratadError, match=r"^study task beta efficientnet_lite0@64 chunk 0 failed: "
    ) as caught:
        run_study(cfg, tmp_path / "s", ray_address=ray, workers=1)
    assert "\n" not in str(caught.value)


def test_rf4_samples_four_nodes_evenly_spaced_in_receptive_field(tmp_path: Path) -> None:
    from stratad.backbones import build_backbone, relative_receptive_field

    root = _root(tmp_path)
    cfg = _cfg(root)
    cfg.nodes, cfg.sizes, cfg.categories, cfg.chunk_nodes = ["rf4"], [64, 96, 128], ["alpha"], 8
    tasks = plan_study(cfg)
    assert [len(t.nodes) for t in tasks] == [4, 4, 4]  # each size its own sample, none carried over
    task = tasks[0]
    rf = relative_receptive_field(
        build_backbone("efficientnet_lite0", weights="random"), list(task.nodes), image_size=64
    )
    values = [rf[n] for n in task.nodes]
    assert len(task.nodes) == 4 and values == sorted(values) and values[0] < values[-1]


def test_bad_workers_fail_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(StratadError, match="workers must be >= 0"):
        run_study(_cfg(_root(tmp_path)), tmp_path / "s", workers=-1)
    assert not (tmp_path / "s").exists()
