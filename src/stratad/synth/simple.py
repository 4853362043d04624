"""Simple defect: a black rectangle (Heckler & König, "Feature Selection for Unsupervised Anomaly
Detection and Localization Using Synthetic Defects").

The defect is deliberately crude: it is only meant to rank feature spaces by how well they react to
*some* local change, not to look like a real defect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from stratad.errors import DataError
from stratad.synth.base import (
    PAPER_BORDER_PX,
    PAPER_SIDE_FRACTIONS,
    DefectConfig,
    DefectGenerator,
    DefectKind,
    SyntheticDefect,
    check_range,
    place_rectangle,
    register_defect,
)


@dataclass(frozen=True)
class SimpleConfig(DefectConfig):
    """``side_fraction_range``: (min, max) of the rectangle's height and width as a fraction of the
    image's height and width, drawn independently (uniformly) for each side; ``border_px``: the
    smallest distance of the rectangle from the image border. Defaults: the selection study's
    appendix (sides 10-50 %, at least 20 px from the border)."""

    side_fraction_range: tuple[float, float] = PAPER_SIDE_FRACTIONS
    border_px: int = PAPER_BORDER_PX

    def validate(self) -> None:
        check_range("side_fraction_range", self.side_fraction_range, 0.0, 1.0)
        if self.border_px < 0:
            raise DataError(f"option border_px must be >= 0, got {self.border_px!r}")


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
        cfg = self.config
        y, x, box_h, box_w = place_rectangle(rng, height, width, cfg.side_fraction_range, cfg.border_px)
        image = target.copy()
        image[y : y + box_h, x : x + box_w] = 0
        mask = np.zeros((height, width), dtype=bool)
        mask[y : y + box_h, x : x + box_w] = True
        return SyntheticDefect(image, mask)
