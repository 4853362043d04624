"""CutPaste (Li et al., "CutPaste: Self-Supervised Learning for Anomaly Detection and Localization",
CVPR 2021): a rectangle cut from a good image and pasted elsewhere.

Two patch geometries: ``paper`` (the default), the selection study's appendix (Heckler & König):
each side a uniform 10-50 % of the image's side, pasted at least 20 px from every border; and ``li``,
Li et al.'s own: the area a uniform 2-15 % of the image area, the aspect ratio (width / height)
log-uniform in 0.3-3.3 (``r`` and ``1 / r`` equally likely), pasted anywhere.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import ClassVar

import cv2
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
    margined_position,
    pixel_length,
    place_rectangle,
    register_defect,
)

#: paste positions redrawn at most this often when the patch would land on its own crop (no change)
_SELF_PASTE_REDRAWS = 10
#: ITU-R BT.601 luma weights of R, G, B
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class CutPasteGeometry(str, enum.Enum):
    #: the selection study's appendix: sides 10-50 % of the image's, at least 20 px from the border
    paper = "paper"
    #: Li et al.: area 2-15 % of the image, aspect ratio 0.3-3.3, anywhere
    li = "li"


@dataclass(frozen=True)
class CutPasteConfig(DefectConfig):
    """Hyper-parameters of :class:`CutPasteDefect`.

    ``geometry``: ``paper`` (the selection study) or ``li`` (Li et al.), see the module docstring.
    ``side_fraction_range``, ``border_px``: the ``paper`` geometry (sides 10-50 %, 20 px margin).
    ``area_fraction_range``: ``li``: patch area as a fraction of the target's area (0.02-0.15).
    ``aspect_ratio_range``: ``li``: width / height, sampled log-uniformly (0.3-3.3).
    ``color_jitter``: strength of a random brightness / contrast / saturation / hue change of the patch
    (Li et al. use 0.1); 0 keeps the pasted pixels identical to the source crop.
    """

    geometry: CutPasteGeometry = CutPasteGeometry.paper
    side_fraction_range: tuple[float, float] = PAPER_SIDE_FRACTIONS
    border_px: int = PAPER_BORDER_PX
    area_fraction_range: tuple[float, float] = (0.02, 0.15)
    aspect_ratio_range: tuple[float, float] = (0.3, 3.3)
    color_jitter: float = 0.0

    def validate(self) -> None:
        try:  # a plain string from Python code ("li") becomes its enum, so ``is`` checks hold
            object.__setattr__(self, "geometry", CutPasteGeometry(self.geometry))
        except ValueError:
            raise DataError(f"option geometry must be one of paper, li, got {self.geometry!r}") from None
        check_range("side_fraction_range", self.side_fraction_range, 0.0, 1.0)
        if self.border_px < 0:
            raise DataError(f"option border_px must be >= 0, got {self.border_px!r}")
        check_range("area_fraction_range", self.area_fraction_range, 0.0, 1.0)
        check_range("aspect_ratio_range", self.aspect_ratio_range, 0.0, None)
        if not 0.0 <= self.color_jitter <= 1.0:
            raise DataError(f"option color_jitter must be in [0, 1], got {self.color_jitter!r}")


@register_defect
class CutPasteDefect(DefectGenerator):
    """Paste a random crop of ``source`` (``None``: the target itself, as in the paper) at a random
    position of the target; the mask is the paste rectangle."""

    kind: ClassVar[DefectKind] = DefectKind.cutpaste
    config_class: ClassVar[type[DefectConfig]] = CutPasteConfig
    config: CutPasteConfig

    def _generate(
        self, target: np.ndarray, source: np.ndarray | None, rng: np.random.Generator
    ) -> SyntheticDefect:
        cfg = self.config
        src = target if source is None else source
        height, width = target.shape[:2]
        src_h, src_w = src.shape[:2]
        # The crop must fit in both images; a smaller source shrinks the patch rather than failing.
        if cfg.geometry is CutPasteGeometry.paper:
            ty, tx, patch_h, patch_w = place_rectangle(
                rng, height, width, cfg.side_fraction_range, cfg.border_px, (src_h, src_w)
            )
            sy, sx = _position(rng, src_h - patch_h, src_w - patch_w)

            def redraw() -> tuple[int, int]:
                return margined_position(rng, height, width, patch_h, patch_w, cfg.border_px)
        else:
            area = rng.uniform(*cfg.area_fraction_range) * height * width
            aspect = math.exp(rng.uniform(*np.log(cfg.aspect_ratio_range)))
            patch_h = pixel_length(math.sqrt(area / aspect), min(height, src_h))
            patch_w = pixel_length(math.sqrt(area * aspect), min(width, src_w))
            sy, sx = _position(rng, src_h - patch_h, src_w - patch_w)
            ty, tx = _position(rng, height - patch_h, width - patch_w)

            def redraw() -> tuple[int, int]:
                return _position(rng, height - patch_h, width - patch_w)

        redraws = 0
        while source is None and (ty, tx) == (sy, sx) and redraws < _SELF_PASTE_REDRAWS:
            ty, tx = redraw()
            redraws += 1
        patch = src[sy : sy + patch_h, sx : sx + patch_w]
        if cfg.color_jitter > 0:
            patch = color_jitter(patch, cfg.color_jitter, rng)
        image = target.copy()
        image[ty : ty + patch_h, tx : tx + patch_w] = patch
        mask = np.zeros((height, width), dtype=bool)
        mask[ty : ty + patch_h, tx : tx + patch_w] = True
        return SyntheticDefect(image, mask)


def _position(rng: np.random.Generator, max_y: int, max_x: int) -> tuple[int, int]:
    return int(rng.integers(0, max_y + 1)), int(rng.integers(0, max_x + 1))


def color_jitter(patch: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast, saturation (factors in ``1 ± strength``) and hue (shift of up to
    ``strength`` of the colour circle) of an RGB uint8 patch, in that fixed order."""
    brightness, contrast, saturation = rng.uniform(1.0 - strength, 1.0 + strength, size=3)
    hue_shift = rng.uniform(-strength, strength)
    rgb = patch.astype(np.float32) / 255.0
    rgb = np.clip(rgb * brightness, 0.0, 1.0)
    luma = rgb @ _LUMA
    rgb = np.clip((rgb - luma.mean()) * contrast + luma.mean(), 0.0, 1.0)
    luma = rgb @ _LUMA
    rgb = np.clip((rgb - luma[..., None]) * saturation + luma[..., None], 0.0, 1.0)
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = np.mod(hsv[..., 0] + 360.0 * hue_shift, 360.0)
    jittered = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return np.clip(np.rint(jittered * 255.0), 0, 255).astype(np.uint8)
