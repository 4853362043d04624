"""Print the benchmark JSON files of benchmarks/results/ as markdown tables.

.venv/bin/python benchmarks/summarize.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("-" if value is None else str(value))


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    detectors = RESULTS / "mtd_detectors.json"
    if detectors.is_file():
        data = json.loads(detectors.read_text())
        print("## Detectors on MTD (EfficientNet-Lite0, 256 px, 571 train / 773 test)\n")
        cols = ["image_auroc", "pixel_auroc", "aupro_30", "p_h", "fit_seconds", "predict_images_per_second"]
        rows = [[name, ", ".join(r["nodes"]), *(r.get(c) for c in cols)] for name, r in data.items()]
        print(table(["config", "nodes", *cols], rows), "\n")
        for r in data.values():
            if "chi2_working_points" in r:
                print("Chi-square working points (held-out good = MT_Free test images):\n")
                print(
                    table(
                        ["sigma", "target_fpr", "observed_fpr", "threshold"],
                        [
                            [w["sigma"], w["target_fpr"], w["observed_fpr"], w["threshold"]]
                            for w in r["chi2_working_points"]
                        ],
                    ),
                    "\n",
                )
    nodes = RESULTS / "mtd_patchcore_nodes.json"
    if nodes.is_file():
        data = json.loads(nodes.read_text())
        print("## PatchCore node sets on MTD\n")
        cols = ["image_auroc", "pixel_auroc", "aupro_30", "p_h"]
        print(
            table(
                ["nodes", *cols], [[", ".join(r["nodes"]), *(r[c] for c in cols)] for r in data["results"]]
            ),
            "\n",
        )
    for name in (
        "patchcore_mtd.json",
        "sweep_mtd.json",
        "sweep_fidelity.json",
        "analysis_mtd_oracle.json",
        "threads.json",
        "selection_mtd.json",
        "selection_mtd_seed0.json",
    ):
        path = RESULTS / name
        if path.is_file():
            print(f"## {name}\n\n```json\n{path.read_text().strip()}\n```\n")


if __name__ == "__main__":
    main()
