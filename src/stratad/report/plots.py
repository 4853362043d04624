"""PNG plots of sweep results.

matplotlib's object API (``Figure`` without pyplot): no backend is switched and no global figure
state is touched, so importing or calling this never changes a host application's matplotlib.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


def performance_vs_receptive_field(
    rows: Sequence[dict[str, Any]], out: Path, metric: str = "p_h", title: str = ""
) -> Path:
    """One line per extractor (backbone, and input size where several were swept): ``metric`` of
    each node, averaged over categories, against the node's relative receptive field."""
    sizes: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        sizes[str(r.get("backbone", "backbone"))].add(str(r.get("image_size", "")))
    per_node: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("relative_rf") in (None, "") or r.get(metric) in (None, ""):
            continue
        backbone = str(r.get("backbone", "backbone"))
        label = f"{backbone} @ {r.get('image_size')} px" if len(sizes[backbone]) > 1 else backbone
        values = per_node[label][str(r.get("node"))]
        if not values:
            values.append(float(r["relative_rf"]))
        values.append(float(r[metric]))
    series = {
        label: [(v[0], sum(v[1:]) / len(v[1:])) for v in nodes.values()] for label, nodes in per_node.items()
    }
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for name, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, linewidth=1, label=name)
    ax.set_xlabel("relative receptive field")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs relative receptive field")
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def best_node_histogram(counts: dict[str, int], out: Path, title: str = "") -> Path:
    """Bar chart: for how many categories each node is the best one."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    fig = Figure(figsize=(max(5.0, 0.35 * len(items) + 2), 4.5))
    ax = fig.subplots()
    ax.bar(range(len(items)), [v for _, v in items])
    ax.set_xticks(range(len(items)), [k for k, _ in items], rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("categories where best")
    ax.set_title(title or "best node per category")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def receptive_field_plot(relative_rf: dict[str, float], out: Path, title: str = "") -> Path:
    """Relative effective receptive field of each node, in graph order."""
    fig = Figure(figsize=(max(6.0, 0.08 * len(relative_rf)), 4))
    ax = fig.subplots()
    ax.plot(range(len(relative_rf)), list(relative_rf.values()), marker=".")
    ax.set_xlabel("node (graph order)")
    ax.set_ylabel("relative receptive field")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out
