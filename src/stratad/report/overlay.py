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
#: the longest side a JPEG can have (larger overlays are shrunk to it)
JPEG_MAX_SIDE = 65500


def encode_image(image: np.ndarray, fmt: str = "png") -> bytes:
    """``png`` or ``jpg`` bytes of an RGB (H, W, 3) or grey (H, W) image (uint8; PNG also uint16)."""
    pixels = np.ascontiguousarray(image[..., ::-1] if image.ndim == 3 else image)
    if fmt == "jpg" and max(pixels.shape[:2]) > JPEG_MAX_SIDE:  # beyond what JPEG can hold: shrink
        scale = JPEG_MAX_SIDE / max(pixels.shape[:2])
        size = (max(1, int(pixels.shape[1] * scale)), max(1, int(pixels.shape[0] * scale)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
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


#: banner colours (RGB): defective, good, no decision (an uncalibrated model)
_BANNER = {True: (200, 30, 30), False: (30, 140, 60), None: (90, 90, 90)}


def decision_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    vmin: float,
    vmax: float,
    *,
    score: float,
    normalized: float | None = None,
    defective: bool | None = None,
    mask: np.ndarray | None = None,
    pixel_threshold: float | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """The overlay a person reads: the heatmap on the image at the image's own resolution, the predicted
    defect mask outlined in white, a banner above it with the decision and the score (normalised
    score in brackets), and a colour bar on the right with the map values at its ends and the pixel
    threshold marked. ``image`` uint8 (H, W, 3), ``anomaly_map`` and ``mask`` (H, W); returns uint8
    RGB (H + banner, W + bar, 3)."""
    h, w = image.shape[:2]
    body = heatmap_overlay(image, anomaly_map, vmin, vmax, alpha)
    # the annotations' scale: the image's size, bounded for extreme aspect ratios (a 2 x 70000 strip
    # gets small annotations, not a banner 4000 pixels high)
    unit = max(64, min(max(h, w), 4 * min(h, w)))
    thick = max(1, round(unit / 400))
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        body = np.ascontiguousarray(body)
        cv2.drawContours(body, contours, -1, (255, 255, 255), thick + 1, cv2.LINE_AA)
    font = cv2.FONT_HERSHEY_SIMPLEX
    banner_h = max(22, round(unit / 18))
    scale = banner_h / 40.0
    bar_w = max(56, round(unit / 9))
    canvas = np.full((h + banner_h, w + bar_w, 3), 255, np.uint8)
    canvas[banner_h:, :w] = body
    # banner: decision and score
    canvas[:banner_h, :] = _BANNER[defective]
    verdict = {True: "DEFECTIVE", False: "GOOD", None: "SCORE"}[defective]
    text = f"{verdict}  {score:.4g}" + ("" if normalized is None else f"  ({normalized:.2f})")
    cv2.putText(
        canvas,
        text,
        (round(banner_h * 0.3), round(banner_h * 0.72)),
        font,
        scale,
        (255, 255, 255),
        max(1, round(scale * 2)),
        cv2.LINE_AA,
    )
    # colour bar: vmax at the top, vmin at the bottom
    top, bottom = banner_h + round(h * 0.06), banner_h + h - round(h * 0.06)
    strip_x0, strip_x1 = w + round(bar_w * 0.12), w + round(bar_w * 0.38)
    span = bottom - top
    if span < 16:  # too flat an image for a readable bar: the banner says the score
        return canvas
    values = np.linspace(255, 0, span).astype(np.uint8)[:, None]
    colours = cv2.applyColorMap(values, cv2.COLORMAP_JET)[:, 0, ::-1]
    canvas[top : top + span, strip_x0:strip_x1] = colours[:, None, :]
    label_scale = max(0.3, bar_w / 200.0)
    label_x = strip_x1 + 3

    def label(y: int, value: float) -> None:
        cv2.putText(canvas, f"{value:.3g}", (label_x, y), font, label_scale, (0, 0, 0), 1, cv2.LINE_AA)

    label(top + round(12 * label_scale / 0.3 * 0.3) + 4, vmax)
    label(top + span - 2, vmin)
    if pixel_threshold is not None and vmax > vmin and vmin <= pixel_threshold <= vmax:
        y = top + round((vmax - pixel_threshold) / (vmax - vmin) * (span - 1))
        cv2.line(canvas, (strip_x0 - 3, y), (strip_x1 + 2, y), (255, 255, 255), thick + 1)
        cv2.line(canvas, (strip_x0 - 3, y), (strip_x1 + 2, y), (0, 0, 0), thick)
        cv2.putText(canvas, "t", (label_x, y + 4), font, label_scale, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
