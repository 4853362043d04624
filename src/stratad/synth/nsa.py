"""NSA: Natural Synthetic Anomalies (Schlüter et al., "Natural Synthetic Anomalies for Self-Supervised
Anomaly Detection and Localization", ECCV 2022).

Patches of another good image are rescaled and blended into the target with Poisson image editing
(``cv2.seamlessClone``), so the defect has no sharp seam. Unlike CutPaste, a Poisson blend changes
an unknown part of its rectangle (smooth areas may not change at all), so the mask is measured from
the result: where the image changed by more than ``change_threshold``, cleaned, inside the pasted
regions. Pixels outside that mask are then reset to the target, so every changed pixel is in the
mask.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from stratad.errors import DataError
from stratad.synth.base import (
    DefectConfig,
    DefectGenerator,
    DefectKind,
    SyntheticDefect,
    check_range,
    pixel_length,
    register_defect,
)
from stratad.synth.foreground import foreground_mask

#: seamlessClone solves inside its mask's bounding box and fails when that box touches or leaves the
#: target, or is thinner than 3 px; pasted patches keep this distance to the target's border.
_MARGIN = 2
_MIN_CLONE_SIDE = 3
#: random positions tried per patch before giving up on that patch (foreground checks can reject many)
_PLACEMENT_TRIES = 50


class CloneMode(str, enum.Enum):
    """Poisson blending variant: ``normal`` takes the patch's gradients (the paper's NSA), ``mixed``
    the stronger of patch and target gradient at each pixel (the paper's NSA-M)."""

    normal = "normal"
    mixed = "mixed"


class CategoryType(str, enum.Enum):
    """NSA's two settings (Schlüter et al.'s official code): objects keep their defects on the
    product and blend up to 3 patches; textures blend up to 4 anywhere."""

    object = "object"
    texture = "texture"


class PatchSampling(str, enum.Enum):
    """How patch sizes, scales and counts are drawn."""

    #: the official implementation: each crop half-width 0.03 + Gamma(shape 2, scale 0.05) of the
    #: image side, clipped to ``half_width_range``; the scale N(1, 0.5) clipped to ``scale_range``;
    #: the first patch always, each further one with probability 1/2
    official = "official"
    #: crop sides uniform in ``patch_side_fraction_range``, scale uniform in ``scale_range``,
    #: 1..max_patches patches uniformly (stratad before the official defaults)
    uniform = "uniform"


#: (max_patches, foreground) of each category type
_CATEGORY_SETTINGS = {CategoryType.object: (3, True), CategoryType.texture: (4, False)}


@dataclass(frozen=True)
class NSAConfig(DefectConfig):
    """Hyper-parameters of :class:`NSADefect`.

    ``category_type``: ``object`` or ``texture``, the official code's two settings (see
    :class:`CategoryType`); it fills in ``max_patches`` and ``foreground`` when they are None.
    ``sampling``: ``official`` or ``uniform`` (see :class:`PatchSampling`).
    ``max_patches``: the most patches one defect blends.
    ``half_width_range``: ``official``: bounds of a crop's half-width as a fraction of the side.
    ``patch_side_fraction_range``: ``uniform``: crop height / width as a fraction of the target's.
    ``scale_range``: the crop is resized by a factor within this range (official: 0.7-1.3).
    ``foreground``: keep crops and defects on the product (see :func:`foreground_mask`); off for
    textures where the whole image is product anyway.
    ``foreground_threshold``: intensity difference (0-255) from the background that counts as product.
    ``min_foreground_fraction``: share of a crop / paste rectangle that must be product.
    ``change_threshold``: a pixel is defective when the largest change over its channels (0-255),
    averaged over a ``change_window`` x ``change_window`` neighbourhood, exceeds this.
    ``change_window``: odd size of that neighbourhood; 1 thresholds each pixel alone.
    ``min_defect_area``: connected defect regions smaller than this (pixels) are dropped.
    ``max_attempts``: fresh draws before giving up when a blend changes nothing visible.
    """

    category_type: CategoryType = CategoryType.object
    sampling: PatchSampling = PatchSampling.official
    #: None: from ``category_type`` (objects 3, textures 4)
    max_patches: int | None = None
    half_width_range: tuple[float, float] = (0.03, 0.4)
    patch_side_fraction_range: tuple[float, float] = (0.1, 0.4)
    scale_range: tuple[float, float] = (0.7, 1.3)
    clone_mode: CloneMode = CloneMode.normal
    #: None: from ``category_type`` (objects on, textures off)
    foreground: bool | None = None
    foreground_threshold: float = 20.0
    min_foreground_fraction: float = 0.25
    change_threshold: float = 3.0
    change_window: int = 5
    min_defect_area: int = 16
    max_attempts: int = 10

    def validate(self) -> None:
        # A plain string from Python code ("texture") becomes its enum, so ``is`` checks hold.
        for name, kind in (
            ("category_type", CategoryType),
            ("sampling", PatchSampling),
            ("clone_mode", CloneMode),
        ):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError:
                choices = ", ".join(k.value for k in kind)
                raise DataError(
                    f"option {name} must be one of {choices}, got {getattr(self, name)!r}"
                ) from None
        if self.max_patches is not None and self.max_patches < 1:
            raise DataError(f"option max_patches must be >= 1, got {self.max_patches!r}")
        check_range("half_width_range", self.half_width_range, 0.0, 0.5)
        check_range("patch_side_fraction_range", self.patch_side_fraction_range, 0.0, 1.0)
        check_range("scale_range", self.scale_range, 0.0, None)
        if not 0.0 <= self.foreground_threshold < 255.0:
            raise DataError(
                f"option foreground_threshold must be in [0, 255), got {self.foreground_threshold!r}"
            )
        if not 0.0 <= self.min_foreground_fraction <= 1.0:
            raise DataError(
                f"option min_foreground_fraction must be in [0, 1], got {self.min_foreground_fraction!r}"
            )
        if not 0.0 <= self.change_threshold < 255.0:
            raise DataError(f"option change_threshold must be in [0, 255), got {self.change_threshold!r}")
        if self.change_window < 1 or self.change_window % 2 == 0:
            raise DataError(f"option change_window must be an odd int >= 1, got {self.change_window!r}")
        if self.min_defect_area < 1:
            raise DataError(f"option min_defect_area must be >= 1, got {self.min_defect_area!r}")
        if self.max_attempts < 1:
            raise DataError(f"option max_attempts must be >= 1, got {self.max_attempts!r}")


@register_defect
class NSADefect(DefectGenerator):
    """Blend 1..max_patches rescaled crops of ``source`` (``None``: the target itself) into the target
    with Poisson image editing, on the product's foreground; the mask is where the image changed.

    A crop may include the source's background; blended onto the product it reads as a hole or a
    stain, which the paper keeps as a plausible defect too.
    """

    kind: ClassVar[DefectKind] = DefectKind.nsa
    config_class: ClassVar[type[DefectConfig]] = NSAConfig
    min_image_side: ClassVar[int] = 16
    config: NSAConfig

    def _generate(
        self, target: np.ndarray, source: np.ndarray | None, rng: np.random.Generator
    ) -> SyntheticDefect:
        cfg = self.config
        target = np.ascontiguousarray(target)
        src = target if source is None else np.ascontiguousarray(source)
        target_fg = self._foreground(target)
        source_fg = target_fg if source is None else self._foreground(src)
        for _ in range(cfg.max_attempts):
            defect = self._attempt(target, src, target_fg, source_fg, rng)
            if defect is not None:
                return defect
        raise DataError(
            f"NSA produced no visible defect in {cfg.max_attempts} attempts; the images may be too "
            "uniform or their foreground too small (try foreground=False or a lower change_threshold)"
        )

    @property
    def max_patches(self) -> int:
        chosen = self.config.max_patches
        return _CATEGORY_SETTINGS[self.config.category_type][0] if chosen is None else chosen

    @property
    def uses_foreground(self) -> bool:
        chosen = self.config.foreground
        return _CATEGORY_SETTINGS[self.config.category_type][1] if chosen is None else chosen

    def _patch_count(self, rng: np.random.Generator) -> int:
        if self.config.sampling is PatchSampling.uniform:
            return int(rng.integers(1, self.max_patches + 1))
        return 1 + int((rng.random(self.max_patches - 1) < 0.5).sum())

    def _crop_side(self, side: int, rng: np.random.Generator) -> float:
        cfg = self.config
        if cfg.sampling is PatchSampling.uniform:
            return float(rng.uniform(*cfg.patch_side_fraction_range)) * side
        low, high = cfg.half_width_range
        return 2.0 * float(np.clip(0.03 + rng.gamma(2.0, 0.05), low, high)) * side

    def _scale(self, rng: np.random.Generator) -> float:
        cfg = self.config
        if cfg.sampling is PatchSampling.uniform:
            return float(rng.uniform(*cfg.scale_range))
        return float(np.clip(rng.normal(1.0, 0.5), *cfg.scale_range))

    def _foreground(self, image: np.ndarray) -> np.ndarray | None:
        """The product mask, or ``None`` when every pixel counts (faster placement)."""
        if not self.uses_foreground:
            return None
        mask = foreground_mask(image, self.config.foreground_threshold)
        return None if mask.all() else mask

    def _attempt(
        self,
        target: np.ndarray,
        source: np.ndarray,
        target_fg: np.ndarray | None,
        source_fg: np.ndarray | None,
        rng: np.random.Generator,
    ) -> SyntheticDefect | None:
        cfg = self.config
        current = target.copy()
        pasted = np.zeros(target.shape[:2], dtype=bool)
        for _ in range(self._patch_count(rng)):
            blended = self._blend_patch(current, source, target_fg, source_fg, rng)
            if blended is None:
                continue
            image, region = blended
            # seamlessClone also alters its box outside the clone mask; keep only the pasted region so
            # that a later patch blends against the image the user will see.
            current[region] = image[region]
            pasted |= region
        changed = np.abs(current.astype(np.int16) - target.astype(np.int16)).max(axis=2).astype(np.float32)
        # Blending a similar texture changes every pixel a little: a per-pixel threshold leaves speckle,
        # the neighbourhood mean marks the whole altered area.
        if cfg.change_window > 1:
            changed = cv2.blur(changed, (cfg.change_window, cfg.change_window))
        mask = _clean_mask(changed > cfg.change_threshold, cfg.min_defect_area) & pasted
        if not mask.any():
            return None
        return SyntheticDefect(np.where(mask[..., None], current, target), mask)

    def _blend_patch(
        self,
        current: np.ndarray,
        source: np.ndarray,
        target_fg: np.ndarray | None,
        source_fg: np.ndarray | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Blend one patch into ``current``; return the blended image and the pasted region, or
        ``None`` when no valid crop / position exists for this draw."""
        cfg = self.config
        height, width = current.shape[:2]
        src_h, src_w = source.shape[:2]
        usable_h, usable_w = height - 2 * _MARGIN, width - 2 * _MARGIN
        crop_h = max(pixel_length(self._crop_side(height, rng), src_h), _MIN_CLONE_SIDE)
        crop_w = max(pixel_length(self._crop_side(width, rng), src_w), _MIN_CLONE_SIDE)
        scale = self._scale(rng)
        patch_h = max(pixel_length(crop_h * scale, usable_h), _MIN_CLONE_SIDE + 2)
        patch_w = max(pixel_length(crop_w * scale, usable_w), _MIN_CLONE_SIDE + 2)
        crop = self._place(source_fg, (src_h, src_w), crop_h, crop_w, 0, rng)
        paste = self._place(target_fg, (height, width), patch_h, patch_w, _MARGIN, rng)
        if crop is None or paste is None:
            return None
        (cy, cx), (ty, tx) = crop, paste
        patch = source[cy : cy + crop_h, cx : cx + crop_w]
        if (patch_h, patch_w) != (crop_h, crop_w):
            patch = cv2.resize(patch, (patch_w, patch_h), interpolation=cv2.INTER_LINEAR)
        box = (slice(ty, ty + patch_h), slice(tx, tx + patch_w))
        clone = np.full((patch_h, patch_w), 255, dtype=np.uint8)
        if target_fg is not None:
            clone[~target_fg[box]] = 0
        # seamlessClone zeroes the mask's outer ring itself; doing it here lets us place the box exactly.
        clone[[0, -1], :] = 0
        clone[:, [0, -1]] = 0
        rows, cols = np.flatnonzero(clone.any(axis=1)), np.flatnonzero(clone.any(axis=0))
        if rows.size < _MIN_CLONE_SIDE or cols.size < _MIN_CLONE_SIDE:
            return None
        by, bh = int(rows[0]), int(rows[-1] - rows[0] + 1)
        bx, bw = int(cols[0]), int(cols[-1] - cols[0] + 1)
        if bh < _MIN_CLONE_SIDE or bw < _MIN_CLONE_SIDE:
            return None
        # seamlessClone centres the mask's bounding box on this point (integer halves, as OpenCV does).
        center = (tx + bx + bw // 2, ty + by + bh // 2)
        region = np.zeros((height, width), dtype=bool)
        region[box] = clone > 0
        flag = cv2.NORMAL_CLONE if cfg.clone_mode is CloneMode.normal else cv2.MIXED_CLONE
        try:
            # OpenCV rewrites the mask argument in place, hence the copy.
            blended = cv2.seamlessClone(np.ascontiguousarray(patch), current, clone.copy(), center, flag)
        except cv2.error:
            return None
        return blended, region

    def _place(
        self,
        fg: np.ndarray | None,
        shape: tuple[int, int],
        box_h: int,
        box_w: int,
        margin: int,
        rng: np.random.Generator,
    ) -> tuple[int, int] | None:
        """Top-left corner of a ``box_h x box_w`` box at least ``margin`` px inside ``shape`` and, with
        a foreground, covering at least ``min_foreground_fraction`` of it; ``None`` if none was found."""
        max_y, max_x = shape[0] - box_h - margin, shape[1] - box_w - margin
        if max_y < margin or max_x < margin:
            return None
        if fg is None:
            return int(rng.integers(margin, max_y + 1)), int(rng.integers(margin, max_x + 1))
        # Centre the box on a random foreground pixel: uniform positions would mostly hit the
        # background when the object is small.
        candidates = np.flatnonzero(fg)
        for _ in range(_PLACEMENT_TRIES):
            cy, cx = divmod(int(candidates[rng.integers(candidates.size)]), shape[1])
            y = min(max(cy - box_h // 2, margin), max_y)
            x = min(max(cx - box_w // 2, margin), max_x)
            if fg[y : y + box_h, x : x + box_w].mean() >= self.config.min_foreground_fraction:
                return y, x
        return None


def _clean_mask(changed: np.ndarray, min_area: int) -> np.ndarray:
    """Opening drops isolated pixels that crossed the threshold, closing fills pinholes where the blend
    happened to match the target, then components smaller than ``min_area`` are removed."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    mask = cv2.morphologyEx(changed.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # label 0 is the background
    return keep[labels]
