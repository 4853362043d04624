"""Oracle selection functions on hand-computed rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stratad.report.plots import best_node_histogram, performance_vs_receptive_field
from stratad.selection.oracle import (
    best_extractor,
    best_extractor_and_node_per_category,
    best_node,
    best_node_counts,
    best_node_per_category,
    best_size_extractor_and_node_per_category,
    block_of,
    group_means,
    layer_type_of,
    load_sweep_rows,
    oracle_table,
    random_selection,
    rf_sampler,
    study_oracles,
)


def row(category: str, backbone: str, size: int, node: str, p_h: float) -> dict:
    return {"category": category, "backbone": backbone, "image_size": size, "node": node, "p_h": p_h}


ROWS = [
    # category A: b.x is best at 256; category B: b.y is best at 128
    row("A", "net", 256, "b.x", 0.9),
    row("A", "net", 256, "b.y", 0.5),
    row("B", "net", 256, "b.x", 0.6),
    row("B", "net", 256, "b.y", 0.8),
    row("A", "net", 128, "b.x", 0.7),
    row("A", "net", 128, "b.y", 0.6),
    row("B", "net", 128, "b.x", 0.5),
    row("B", "net", 128, "b.y", 1.0),
]


def test_oracle_values_by_hand() -> None:
    # Every oracle but the last sees 256 px only. random: A (0.9+0.5)/2, B (0.6+0.8)/2 -> 0.7
    assert random_selection([r for r in ROWS if r["image_size"] == 256]) == pytest.approx(0.7)
    assert best_extractor(ROWS) == ("net", pytest.approx(0.7))
    # one node for all categories at 256: b.x (0.9+0.6)/2 = 0.75 (b.y at 128 would be 0.8)
    assert best_node(ROWS) == (("net", "b.x"), pytest.approx(0.75))
    # per category at 256: A 0.9, B 0.8 -> 0.85 ; with the size too: A 0.9, B 1.0 -> 0.95
    assert best_extractor_and_node_per_category(ROWS)[0] == pytest.approx(0.85)
    value, choices = best_size_extractor_and_node_per_category(ROWS)
    assert value == pytest.approx(0.95) and choices["B"] == {
        "backbone": "net",
        "image_size": 128,
        "node": "b.y",
    }
    assert best_node_per_category(ROWS) == {
        ("net", 256): pytest.approx(0.85),
        ("net", 128): pytest.approx(0.85),
    }
    assert best_node_counts(ROWS) == {"b.x": 2, "b.y": 2}
    table = oracle_table(ROWS)
    assert table["best_node"]["node"] == "b.x" and table["base_size"] == 256


def test_the_per_object_oracle_chooses_the_extractor_too() -> None:
    rows = [*ROWS, row("A", "other", 256, "c.z", 0.95), row("B", "other", 256, "c.z", 0.4)]
    # random at 256: A (0.9+0.5+0.95)/3, B (0.6+0.8+0.4)/3
    assert oracle_table(rows)["random"] == pytest.approx(((0.9 + 0.5 + 0.95) / 3 + 0.6) / 2)
    assert best_extractor(rows) == ("net", pytest.approx(0.7))  # other: (0.95 + 0.4) / 2
    value, choices = best_extractor_and_node_per_category(rows)
    assert value == pytest.approx((0.95 + 0.8) / 2)
    assert choices == {"A": {"backbone": "other", "node": "c.z"}, "B": {"backbone": "net", "node": "b.y"}}
    assert best_size_extractor_and_node_per_category(rows)[0] == pytest.approx((0.95 + 1.0) / 2)
    # without 256 px the smallest size is the base
    assert oracle_table([r for r in rows if r["image_size"] == 128])["base_size"] == 128


def test_classification_and_localisation_oracles_are_separate() -> None:
    rows = [
        {**row("A", "net", 256, "b.x", 0.0), "image_auroc": 1.0, "aupro_30": 0.2},
        {**row("A", "net", 256, "b.y", 0.0), "image_auroc": 0.6, "aupro_30": 0.9},
    ]
    tables = study_oracles(rows)
    assert tables["classification"]["best_node"]["node"] == "b.x"
    assert tables["localization"]["best_node"]["node"] == "b.y"
    assert tables["localization"]["metric"] == "aupro_30"


def test_groups_by_block_and_layer_type_and_the_rf_sampler() -> None:
    assert block_of("blocks.4.2.conv_dw") == "blocks.4" and block_of("layer2.1.bn1") == "layer2"
    assert block_of("features.denseblock2.denselayer3.conv1") == "features.denseblock2"
    assert [layer_type_of(n) for n in ("blocks.4.2.bn1", "layer3.0.conv2", "blocks.1.0.add", "conv_pwl")] == [
        "bn",
        "conv",
        "add",
        "conv_pwl",
    ]
    rows = [
        row("A", "net", 256, n, v)
        for n, v in (("blocks.1.0.bn1", 0.2), ("blocks.1.0.add", 0.4), ("blocks.2.0.bn2", 0.6))
    ]
    groups = group_means(rows)
    assert groups["block"] == {"net:blocks.1": pytest.approx(0.3), "net:blocks.2": pytest.approx(0.6)}
    assert groups["layer_type"] == {"add": pytest.approx(0.4), "bn": pytest.approx(0.4)}
    rf = {"a": 0.1, "b": 0.2, "c": 0.5, "d": 0.55, "e": 0.9, "f": 1.0}
    assert rf_sampler(rf, 4) == ["a", "c", "d", "f"]
    # a twin (an identity node) has its input's field: only the first of them is a candidate
    assert rf_sampler({"a": 0.1, "a.aa": 0.1, "c": 0.5, "f": 1.0}, 3) == ["a", "c", "f"]
    assert rf_sampler({"a": 0.1, "a.aa": 0.1, "b": 0.3, "f": 1.0}, 3) == ["a", "b", "f"]
    assert rf_sampler({"a": 0.1, "b": 0.3}, 4) == ["a", "b"]


def test_load_sweep_rows_and_plots(tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps({"label": "mtd", "backbone": "net", "image_size": 256}))
    (folder / "nodes.csv").write_text(
        "node,relative_rf,p_h,same_as\nb.x,0.1,0.7,\nb.y,0.4,,\nb.z,0.8,0.9,\nb.zz,0.8,0.9,b.z\n"
    )
    rows = load_sweep_rows([folder])
    assert [r["node"] for r in rows] == ["b.x", "b.z"]  # no value, and a twin, are left out
    assert rows[0]["category"] == "mtd"
    assert performance_vs_receptive_field(rows, tmp_path / "rf.png").stat().st_size > 1000
    assert best_node_histogram(best_node_counts(rows), tmp_path / "best.png").stat().st_size > 1000


def test_an_oracle_that_no_node_can_fill_says_so() -> None:
    from stratad.errors import StratadError

    rows = [row("A", "net", 256, "b.x", 0.9), row("B", "net", 256, "b.y", 0.8)]  # a partial study
    with pytest.raises(StratadError, match="no \\(backbone, node\\) was evaluated on every category"):
        best_node(rows)
