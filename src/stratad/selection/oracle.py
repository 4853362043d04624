"""Oracle selection functions over sweep results with REAL test labels (Heckler et al.).

They bound what any selection strategy can reach and give the "random node" baseline. Each row is
one evaluated configuration with keys ``category``, ``backbone``, ``image_size``, ``node`` and the
metric column (``p_h`` by default). Results are means over categories.

- ``random``: expected value of a uniformly random (backbone, size, node) per category.
- ``best_extractor``: one backbone for all categories (at its size), node drawn at random.
- ``best_node``: one (backbone, size, node) for all categories.
- ``best_node_per_category``: per backbone and size, the best node of each category.
- ``best_size_and_node_per_category``: per backbone, the best (size, node) of each category.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from statistics import mean
from typing import Any

Row = dict[str, Any]


def _metric(row: Row, metric: str) -> float:
    return float(row[metric])


def _group(rows: Iterable[Row], keys: Sequence[str]) -> dict[tuple[Any, ...], list[Row]]:
    out: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def _mean_over_categories(per_category: dict[Any, float]) -> float:
    return mean(per_category.values())


def random_selection(rows: Sequence[Row], metric: str = "p_h") -> float:
    by_cat = _group(rows, ["category"])
    return _mean_over_categories({c: mean(_metric(r, metric) for r in rs) for c, rs in by_cat.items()})


def best_extractor(rows: Sequence[Row], metric: str = "p_h") -> tuple[tuple[str, int], float]:
    scores = {
        key: random_selection(rs, metric) for key, rs in _group(rows, ["backbone", "image_size"]).items()
    }
    best = max(scores, key=lambda k: scores[k])
    return (best[0], best[1]), scores[best]


def best_node(rows: Sequence[Row], metric: str = "p_h") -> tuple[tuple[str, int, str], float]:
    n_categories = len(_group(rows, ["category"]))
    scores = {
        key: mean(_metric(r, metric) for r in rs)
        for key, rs in _group(rows, ["backbone", "image_size", "node"]).items()
        if len(rs) == n_categories  # a node must be evaluated on every category to be chosen
    }
    best = max(scores, key=lambda k: scores[k])
    return (best[0], best[1], best[2]), scores[best]


def best_node_per_category(rows: Sequence[Row], metric: str = "p_h") -> dict[tuple[str, int], float]:
    out = {}
    for key, rs in _group(rows, ["backbone", "image_size"]).items():
        per_cat = {c: max(_metric(r, metric) for r in cr) for (c,), cr in _group(rs, ["category"]).items()}
        out[(key[0], key[1])] = _mean_over_categories(per_cat)
    return out


def best_size_and_node_per_category(rows: Sequence[Row], metric: str = "p_h") -> dict[str, float]:
    out = {}
    for (backbone,), rs in _group(rows, ["backbone"]).items():
        per_cat = {c: max(_metric(r, metric) for r in cr) for (c,), cr in _group(rs, ["category"]).items()}
        out[backbone] = _mean_over_categories(per_cat)
    return out


def best_node_counts(rows: Sequence[Row], metric: str = "p_h") -> dict[str, int]:
    """For each node, the number of (category, backbone, size) groups in which it is the best node."""
    counts: dict[str, int] = defaultdict(int)
    for _, rs in _group(rows, ["category", "backbone", "image_size"]).items():
        counts[max(rs, key=lambda r: _metric(r, metric))["node"]] += 1
    return dict(counts)


def oracle_table(rows: Sequence[Row], metric: str = "p_h") -> dict[str, Any]:
    extractor, extractor_value = best_extractor(rows, metric)
    node, node_value = best_node(rows, metric)
    return {
        "random": random_selection(rows, metric),
        "best_extractor": {"backbone": extractor[0], "image_size": extractor[1], "value": extractor_value},
        "best_node": {"backbone": node[0], "image_size": node[1], "node": node[2], "value": node_value},
        "best_node_per_category": {
            f"{b}@{s}": v for (b, s), v in best_node_per_category(rows, metric).items()
        },
        "best_size_and_node_per_category": best_size_and_node_per_category(rows, metric),
    }


def load_sweep_rows(folders: Sequence[Path], metric: str = "p_h") -> list[Row]:
    """Rows of several sweep folders, tagged with category (the sweep's label), backbone and size,
    and of study folders (``study.csv`` of ``stratad study``)."""
    import csv
    import json

    from stratad.errors import StratadError
    from stratad.selection.config import COMBINATION_SEPARATOR
    from stratad.selection.study import STUDY_FILE, read_study_rows

    rows: list[Row] = []
    for folder in folders:
        if (folder / STUDY_FILE).is_file():  # a whole study: categories x backbones x sizes
            rows.extend(read_study_rows(folder / STUDY_FILE, metric))
            continue
        nodes_csv, stamp = folder / "nodes.csv", folder / "sweep.json"
        if not nodes_csv.is_file() or not stamp.is_file():
            raise StratadError(f"{folder} is not a sweep folder (needs nodes.csv and sweep.json)")
        info = json.loads(stamp.read_text())
        with open(nodes_csv, newline="") as handle:
            for r in csv.DictReader(handle):
                # Node combinations (the default pair a sweep adds) are no node of the study.
                if r.get(metric) in (None, "") or COMBINATION_SEPARATOR in r["node"]:
                    continue
                rows.append(
                    {
                        **r,
                        "category": info.get("label") or folder.name,
                        "backbone": info["backbone"],
                        "image_size": int(info["image_size"]),
                    }
                )
    if not rows:
        raise StratadError(f"no sweep rows with a {metric} value in {', '.join(map(str, folders))}")
    return rows
