"""PNG plots of sweep results (matplotlib, no display needed)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def performance_vs_receptive_field(
    rows: Sequence[dict[str, Any]], out: Path, metric: str = "p_h", title: str = ""
) -> Path:
    """One line per backbone: ``metric`` of each node against its relative receptive field."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if r.get("relative_rf") in (None, "") or r.get(metric) in (None, ""):
            continue
        series[str(r.get("backbone", "backbone"))].append((float(r["relative_rf"]), float(r[metric])))
    fig, ax = plt.subplots(figsize=(7, 4.5))
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
    plt.close(fig)
    return out


def best_node_histogram(counts: dict[str, int], out: Path, title: str = "") -> Path:
    """Bar chart: for how many categories each node is the best one."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(items) + 2), 4.5))
    ax.bar(range(len(items)), [v for _, v in items])
    ax.set_xticks(range(len(items)), [k for k, _ in items], rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("categories where best")
    ax.set_title(title or "best node per category")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
