"""Heatmap overlays of anomaly maps on their images."""

from __future__ import annotations

import cv2
import numpy as np


def heatmap_overlay(
    image: np.ndarray, anomaly_map: np.ndarray, vmin: float, vmax: float, alpha: float = 0.5
) -> np.ndarray:
    """uint8 RGB image (H, W, 3) + map (H, W) -> uint8 RGB overlay, map scaled to [vmin, vmax]."""
    span = max(vmax - vmin, 1e-12)
    scaled = np.clip((anomaly_map - vmin) / span, 0.0, 1.0)
    colour = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return cv2.addWeighted(image, 1.0 - alpha, colour, alpha, 0.0)


def write_png(path: str, image: np.ndarray) -> None:
    """Write an RGB uint8 image (cv2 wants BGR)."""
    ok = cv2.imwrite(path, np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise OSError(f"cannot write {path}")
