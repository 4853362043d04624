"""Simple defect: a black rectangle (Heckler & König, "Feature Selection for Unsupervised Anomaly
Detection and Localization Using Synthetic Defects").

The defect is deliberately crude: it is only meant to rank feature spaces by how well they react to
*some* local change, not to look like a real defect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from stratad.synth.base import (
    DefectConfig,
    DefectGenerator,
    DefectKind,
    SyntheticDefect,
    check_range,
    pixel_length,
    register_defect,
)


@dataclass(frozen=True)
class SimpleConfig(DefectConfig):
    """``side_fraction_range``: (min, max) of the rectangle's height and width as a fraction of the
    image's height and width, drawn independently (uniformly) for each side."""

    side_fraction_range: tuple[float, float] = (0.05, 0.3)

    def validate(self) -> None:
        check_range("side_fraction_range", self.side_fraction_range, 0.0, 1.0)


@register_defect
class SimpleDefect(DefectGenerator):
    """Set an axis-aligned random rectangle to 0 in every channel; the mask is that rectangle.

    ``source`` is ignored.
    """

    kind: ClassVar[DefectKind] = DefectKind.simple
    config_class: ClassVar[type[DefectConfig]] = SimpleConfig
    config: SimpleConfig

    def _generate(
        self, target: np.ndarray, source: np.ndarray | None, rng: np.random.Generator
    ) -> SyntheticDefect:
        height, width = target.shape[:2]
        lo, hi = self.config.side_fraction_range
        box_h = pixel_length(rng.uniform(lo, hi) * height, height)
        box_w = pixel_length(rng.uniform(lo, hi) * width, width)
        y = int(rng.integers(0, height - box_h + 1))
        x = int(rng.integers(0, width - box_w + 1))
        image = target.copy()
        image[y : y + box_h, x : x + box_w] = 0
        mask = np.zeros((height, width), dtype=bool)
        mask[y : y + box_h, x : x + box_w] = True
        return SyntheticDefect(image, mask)
