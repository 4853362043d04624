"""Oracle selection functions on hand-computed rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stratad.report.plots import best_node_histogram, performance_vs_receptive_field
from stratad.selection.oracle import (
    best_extractor,
    best_node,
    best_node_counts,
    best_node_per_category,
    best_size_and_node_per_category,
    load_sweep_rows,
    oracle_table,
    random_selection,
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
    # random: A mean (0.9+0.5+0.7+0.6)/4 = 0.675, B mean (0.6+0.8+0.5+1.0)/4 = 0.725 -> 0.7
    assert random_selection(ROWS) == pytest.approx(0.7)
    # best extractor: net@256 -> (0.7 + 0.7)/2 = 0.7 ; net@128 -> (0.65 + 0.75)/2 = 0.7: tie, both 0.7
    assert best_extractor(ROWS)[1] == pytest.approx(0.7)
    # best single node for all categories: net@128 b.y -> (0.6 + 1.0)/2 = 0.8
    assert best_node(ROWS) == (("net", 128, "b.y"), pytest.approx(0.8))
    # per category at 256: A 0.9, B 0.8 -> 0.85 ; at 128: A 0.7, B 1.0 -> 0.85
    assert best_node_per_category(ROWS) == {
        ("net", 256): pytest.approx(0.85),
        ("net", 128): pytest.approx(0.85),
    }
    # size and node per category: A 0.9, B 1.0 -> 0.95
    assert best_size_and_node_per_category(ROWS) == {"net": pytest.approx(0.95)}
    assert best_node_counts(ROWS) == {"b.x": 2, "b.y": 2}
    table = oracle_table(ROWS)
    assert table["best_node"]["node"] == "b.y"


def test_load_sweep_rows_and_plots(tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps({"label": "mtd", "backbone": "net", "image_size": 256}))
    (folder / "nodes.csv").write_text("node,relative_rf,p_h\nb.x,0.1,0.7\nb.y,0.4,\nb.z,0.8,0.9\n")
    rows = load_sweep_rows([folder])
    assert [r["node"] for r in rows] == ["b.x", "b.z"]
    assert rows[0]["category"] == "mtd"
    assert performance_vs_receptive_field(rows, tmp_path / "rf.png").stat().st_size > 1000
    assert best_node_histogram(best_node_counts(rows), tmp_path / "best.png").stat().st_size > 1000
