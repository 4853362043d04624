"""The feature-selection split of the good training images (Heckler & König).

D_T (70%) fits the detector of every candidate node; D_V (30%) becomes the synthetic validation
set: 25% of it stays good, 75% receives synthetic defects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stratad.data.datasets import ImageRecord, seeded_split
from stratad.errors import DataError


@dataclass
class SelectionSplit:
    fit: list[ImageRecord]
    val_good: list[ImageRecord]
    val_defect: list[ImageRecord]

    def describe(self) -> str:
        n_good, n_bad = len(self.val_good), len(self.val_defect)
        return f"D_T {len(self.fit)} good, D_V {n_good} good + {n_bad} synthetic defects"


def selection_split(
    train: Sequence[ImageRecord], seed: int = 0, fit_fraction: float = 0.7, good_fraction: float = 0.25
) -> SelectionSplit:
    if len(train) < 4:
        raise DataError(f"feature selection needs at least 4 good training images, got {len(train)}")
    by_path = {r.path: r for r in train}
    fit_paths, val_paths = seeded_split(list(by_path), fit_fraction, seed)
    # A second, independent draw for the good/defect partition of D_V.
    good_paths, defect_paths = seeded_split(val_paths, good_fraction, seed + 1)
    if not good_paths or not defect_paths:
        raise DataError(
            f"{len(train)} good images are too few to build both good and defective validation images"
        )
    return SelectionSplit(
        [by_path[p] for p in fit_paths], [by_path[p] for p in good_paths], [by_path[p] for p in defect_paths]
    )
