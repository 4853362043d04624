"""Oracle selection functions over sweep results with REAL test labels, as the extractor study
defines them (Heckler, König & Bergmann, CVPR-W 2023).

They bound what any selection strategy can reach and give the "random" baseline. Each row is one
evaluated configuration with keys ``category``, ``backbone``, ``image_size``, ``node`` and metric
columns. Values are means over categories. Every oracle but the last sees only the rows at the base
image size (256 px, else the smallest size evaluated):

- ``random``: the expected value of a uniformly random (backbone, node) per category;
- ``best_extractor``: one backbone for all categories, its node drawn at random;
- ``best_node``: one (backbone, node) for all categories;
- ``best_extractor_and_node_per_category``: per category its best (backbone, node);
- ``best_size_extractor_and_node_per_category``: per category its best (backbone, size, node), over
  every size.

:func:`study_oracles` computes them separately for classification (image AUROC), localisation
(AU-PRO) and their harmonic mean P_h, and :func:`group_means` the mean metric per block and per layer
type (the study's Fig. 4).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from statistics import mean
from typing import Any

Row = dict[str, Any]

#: The image size of every oracle but the last (the study's protocol).
BASE_SIZE = 256


def _metric(row: Row, metric: str) -> float:
    return float(row[metric])


def _group(rows: Iterable[Row], keys: Sequence[str]) -> dict[tuple[Any, ...], list[Row]]:
    out: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def _mean_over_categories(per_category: dict[Any, float]) -> float:
    return mean(per_category.values())


def base_size(rows: Sequence[Row]) -> int:
    """256 when the rows hold it, else the smallest size they hold."""
    sizes = {int(r["image_size"]) for r in rows}
    return BASE_SIZE if BASE_SIZE in sizes else min(sizes)


def at_base_size(rows: Sequence[Row]) -> list[Row]:
    size = base_size(rows)
    return [r for r in rows if int(r["image_size"]) == size]


def random_selection(rows: Sequence[Row], metric: str = "p_h") -> float:
    by_cat = _group(rows, ["category"])
    return _mean_over_categories({c: mean(_metric(r, metric) for r in rs) for c, rs in by_cat.items()})


def best_extractor(rows: Sequence[Row], metric: str = "p_h") -> tuple[str, float]:
    """One backbone for all categories (node random), at the base size."""
    scores = {
        key[0]: random_selection(rs, metric) for key, rs in _group(at_base_size(rows), ["backbone"]).items()
    }
    best = max(scores, key=lambda k: scores[k])
    return best, scores[best]


def best_node(rows: Sequence[Row], metric: str = "p_h") -> tuple[tuple[str, str], float]:
    """One (backbone, node) for all categories, at the base size."""
    base = at_base_size(rows)
    n_categories = len(_group(base, ["category"]))
    scores = {
        (key[0], key[1]): mean(_metric(r, metric) for r in rs)
        for key, rs in _group(base, ["backbone", "node"]).items()
        if len(rs) == n_categories  # a node must be evaluated on every category to be chosen
    }
    if not scores:
        from stratad.errors import StratadError

        raise StratadError(
            f"no (backbone, node) was evaluated on every category at {base_size(rows)} px; "
            "analyze a finished study (or sweeps of the same nodes)"
        )
    best = max(scores, key=lambda k: scores[k])
    return best, scores[best]


def _best_per_category(rows: Sequence[Row], metric: str, keys: Sequence[str]) -> tuple[float, dict[str, Any]]:
    choices, values = {}, {}
    for (category,), rs in _group(rows, ["category"]).items():
        best = max(rs, key=lambda r: _metric(r, metric))
        choices[category] = {k: best[k] for k in keys}
        values[category] = _metric(best, metric)
    return _mean_over_categories(values), choices


def best_extractor_and_node_per_category(
    rows: Sequence[Row], metric: str = "p_h"
) -> tuple[float, dict[str, Any]]:
    """Per category its best (backbone, node) at the base size: the value and each choice."""
    return _best_per_category(at_base_size(rows), metric, ["backbone", "node"])


def best_size_extractor_and_node_per_category(
    rows: Sequence[Row], metric: str = "p_h"
) -> tuple[float, dict[str, Any]]:
    """Per category its best (backbone, size, node) over every size: the value and each choice."""
    return _best_per_category(rows, metric, ["backbone", "image_size", "node"])


def best_node_per_category(rows: Sequence[Row], metric: str = "p_h") -> dict[tuple[str, int], float]:
    """Per backbone and size, the mean over categories of each category's best node (a breakdown
    beside the study's oracles)."""
    out = {}
    for key, rs in _group(rows, ["backbone", "image_size"]).items():
        per_cat = {c: max(_metric(r, metric) for r in cr) for (c,), cr in _group(rs, ["category"]).items()}
        out[(key[0], key[1])] = _mean_over_categories(per_cat)
    return out


def best_node_counts(rows: Sequence[Row], metric: str = "p_h") -> dict[str, int]:
    """For each node, the number of (category, backbone, size) groups in which it is the best node."""
    counts: dict[str, int] = defaultdict(int)
    for _, rs in _group(rows, ["category", "backbone", "image_size"]).items():
        counts[max(rs, key=lambda r: _metric(r, metric))["node"]] += 1
    return dict(counts)


def oracle_table(rows: Sequence[Row], metric: str = "p_h") -> dict[str, Any]:
    """Every oracle of the study for one metric (module docstring)."""
    rows = [r for r in rows if r.get(metric) not in (None, "") and not math.isnan(float(r[metric]))]
    extractor, extractor_value = best_extractor(rows, metric)
    node, node_value = best_node(rows, metric)
    per_object, per_object_choice = best_extractor_and_node_per_category(rows, metric)
    per_object_size, per_object_size_choice = best_size_extractor_and_node_per_category(rows, metric)
    return {
        "metric": metric,
        "base_size": base_size(rows),
        "random": random_selection(at_base_size(rows), metric),
        "best_extractor": {"backbone": extractor, "value": extractor_value},
        "best_node": {"backbone": node[0], "node": node[1], "value": node_value},
        "best_extractor_and_node_per_category": {"value": per_object, "choices": per_object_choice},
        "best_size_extractor_and_node_per_category": {
            "value": per_object_size,
            "choices": per_object_size_choice,
        },
        "best_node_per_category_by_extractor": {
            f"{b}@{s}": v for (b, s), v in best_node_per_category(rows, metric).items()
        },
    }


def study_oracles(rows: Sequence[Row]) -> dict[str, Any]:
    """The oracles for classification (image AUROC), localisation (AU-PRO, when the rows have maps)
    and P_h, each on its own (a node can be the best classifier and a poor localiser)."""
    out = {"classification": oracle_table(rows, "image_auroc")}
    aupro = next((k for k in rows[0] if k.startswith("aupro_")), None) if rows else None
    if aupro is not None and any(r.get(aupro) not in (None, "") for r in rows):
        out["localization"] = oracle_table(rows, aupro)
    if any(r.get("p_h") not in (None, "") for r in rows):
        out["p_h"] = oracle_table(rows, "p_h")
    return out


def block_of(node: str) -> str:
    """The block a node belongs to: ``blocks.4.2.conv_dw`` -> ``blocks.4``, ``layer2.1.bn1`` -> ``layer2``,
    ``features.denseblock2.denselayer3.conv1`` -> ``features.denseblock2``."""
    parts = node.split(".")
    if parts[0][-1:].isdigit():  # a numbered stage itself: layer2, stage3
        return parts[0]
    if len(parts) > 1 and parts[1].isdigit():  # a container of stages: blocks.4, features.3
        return ".".join(parts[:2])
    if len(parts) > 2 and parts[0] in ("features", "model", "backbone"):
        return ".".join(parts[:2])
    return parts[0]


def layer_type_of(node: str) -> str:
    """A node's layer type: its last name without trailing digits (``bn1`` -> ``bn``, ``conv_pwl``,
    ``add``, ``relu``)."""
    return re.sub(r"_?\d+$", "", node.split(".")[-1]) or node.split(".")[-1]


def group_means(rows: Sequence[Row], metric: str = "p_h") -> dict[str, dict[str, float]]:
    """The mean metric per block and per layer type at the base size (per backbone for blocks,
    ``backbone:block``), over categories and nodes: the study's grouping (Fig. 4)."""
    base = at_base_size([r for r in rows if r.get(metric) not in (None, "")])
    blocks: dict[str, list[float]] = defaultdict(list)
    types: dict[str, list[float]] = defaultdict(list)
    for r in base:
        blocks[f"{r['backbone']}:{block_of(r['node'])}"].append(_metric(r, metric))
        types[layer_type_of(r["node"])].append(_metric(r, metric))
    return {
        "block": {k: mean(v) for k, v in blocks.items()},
        "layer_type": {k: mean(v) for k, v in sorted(types.items())},
    }


def rf_sampler(relative_rf: dict[str, float], count: int = 4) -> list[str]:
    """``count`` nodes evenly spaced in relative receptive field (the study's sampling of a backbone's
    layers): for targets spread evenly from the smallest to the largest field, the node nearest each,
    distinct, in the given (graph) order. Of nodes with the very same field (an identity node and its
    input) only the first is a candidate."""
    if count < 1:
        raise ValueError("count must be at least 1")
    nodes, seen = [], set()
    for n, v in relative_rf.items():  # one node per field: twins (identity nodes) share their input's
        if v is not None and not math.isnan(v) and v not in seen:
            nodes.append(n)
            seen.add(v)
    if len(nodes) <= count:
        return nodes
    low, high = min(relative_rf[n] for n in nodes), max(relative_rf[n] for n in nodes)
    chosen: list[str] = []
    for k in range(count):
        target = low + (high - low) * k / (count - 1) if count > 1 else (low + high) / 2
        free = [n for n in nodes if n not in chosen]
        chosen.append(min(free, key=lambda n: (abs(relative_rf[n] - target), nodes.index(n))))
    return [n for n in nodes if n in chosen]


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
                # Node combinations (the default pair a sweep adds) are no node of the study, and a
                # twin (a node whose output equals an earlier one's) would count that node twice.
                if r.get(metric) in (None, "") or COMBINATION_SEPARATOR in r["node"] or r.get("same_as"):
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
