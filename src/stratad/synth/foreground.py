"""Where the product is: a foreground mask from an intensity threshold against the background.

NSA (Schlüter et al., ECCV 2022) keeps synthetic defects on the object by thresholding each image
against a per-category background intensity. We estimate that intensity from the image border, which
the object rarely fills, so no per-category table is needed.
"""

from __future__ import annotations

import cv2
import numpy as np

from stratad.synth.base import check_image

#: a foreground smaller than this fraction of the image is treated as "no object found"
MIN_OBJECT_FRACTION = 0.01
#: share of border pixels allowed to differ from the background before the image counts as a texture
_BORDER_QUANTILE = 90.0


def foreground_mask(
    image: np.ndarray, threshold: float = 20.0, background: float | None = None
) -> np.ndarray:
    """Bool ``(H, W)`` mask of the pixels whose mean intensity differs from the background by more
    than ``threshold``, cleaned with a morphological closing then opening.

    ``background`` is the background's mean intensity (0-255); ``None`` estimates it as the median of
    the image border. Textures and fully-filled images (a border that is not one flat intensity), and
    images where (almost) nothing passes the threshold, get an all-True mask: every pixel is product.
    """
    check_image(image, "image")
    gray = image.mean(axis=2, dtype=np.float32)
    height, width = gray.shape
    if background is None:
        border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
        background = float(np.median(border))
        if np.percentile(np.abs(border - background), _BORDER_QUANTILE) > threshold:
            return np.ones((height, width), dtype=bool)
    raw = (np.abs(gray - background) > threshold).astype(np.uint8)
    # Close first so that dark details inside the object stay object, then open to drop isolated
    # background pixels that crossed the threshold (noise, JPEG artefacts).
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_kernel_size(height, width),) * 2)
    cleaned = cv2.morphologyEx(raw, cv2.MORPH_CLOSE, kernel)
    cleaned = cv2.morphologyEx(cleaned, cv2.MORPH_OPEN, kernel)
    mask = cleaned.astype(bool)
    if mask.mean() < MIN_OBJECT_FRACTION:
        return np.ones((height, width), dtype=bool)
    return mask


def _kernel_size(height: int, width: int) -> int:
    """Odd structuring-element size growing with the image: 3 px at 64, 5 at 256, 9 at 512."""
    return 2 * max(1, round(min(height, width) / 128)) + 1


#: an image set counts as a texture when its foreground covers at least this share of the pixels
TEXTURE_FOREGROUND_FRACTION = 0.9


def detect_category_type(images: list[np.ndarray], threshold: float = 20.0) -> str:
    """``"texture"`` when the foreground of the images (:func:`foreground_mask`) covers on average at
    least :data:`TEXTURE_FOREGROUND_FRACTION` of the pixels (no flat background: fabric, tiles,
    wood), else ``"object"`` (a product on a background). It chooses NSA's official settings."""
    if not images:
        raise ValueError("detect_category_type needs at least one image")
    covered = float(np.mean([foreground_mask(image, threshold).mean() for image in images]))
    return "texture" if covered >= TEXTURE_FOREGROUND_FRACTION else "object"
