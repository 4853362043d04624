"""Heatmap overlays of anomaly maps on their images."""

from __future__ import annotations

from pathlib import Path

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


#: JPEG quality of overlays: no visible artefact on a heatmap, a fifth of the PNG encoding time
JPEG_QUALITY = 90


def encode_image(image: np.ndarray, fmt: str = "png") -> bytes:
    """``png`` or ``jpg`` bytes of an RGB (H, W, 3) or grey (H, W) image (uint8; PNG also uint16)."""
    pixels = np.ascontiguousarray(image[..., ::-1] if image.ndim == 3 else image)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if fmt == "jpg" else []
    ok, data = cv2.imencode(f".{fmt}", pixels, params)
    if not ok:
        raise OSError(f"cannot encode a {fmt.upper()} image")
    return data.tobytes()


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB (H, W, 3) or grey (H, W) uint8 / uint16 image."""
    return encode_image(image, "png")


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB (or grey) image as PNG, atomically. The bytes are encoded in memory and written by
    Python, which takes any file name the OS allows (OpenCV's ``imwrite`` crashes on a name that is
    not valid UTF-8)."""
    from stratad.export.io import atomic_write

    data = encode_png(image)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
