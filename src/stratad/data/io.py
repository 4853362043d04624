"""Reading and validating images and masks.

Every failure becomes a one-line :class:`ImageReadError` / :class:`MaskError` naming the file, so a
corrupt JPEG in a folder of thousands is found without a traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from stratad.errors import ImageReadError, MaskError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image as uint8 (H, W, 3); grayscale is replicated, alpha dropped, 16-bit scaled."""
    source = Path(path)
    if not source.is_file():
        raise ImageReadError(f"image not found: {source}")
    try:
        with Image.open(source) as opened:
            opened.load()
            img: Image.Image = opened
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit scans: scale to 8 bit instead of letting convert() clip at 255.
                arr = np.asarray(img, dtype=np.float64)
                top = max(float(arr.max()), 1.0)
                img = Image.fromarray(
                    (arr / (65535.0 if top > 255 else 255.0) * 255.0).clip(0, 255).astype(np.uint8)
                )
            out = np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except UnidentifiedImageError:
        raise ImageReadError(f"cannot read image {source}: not an image or corrupt") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"cannot read image {source}: {exc}") from None
    if out.ndim != 3 or out.shape[0] == 0 or out.shape[1] == 0:
        raise ImageReadError(f"image {source} is empty")
    return out


def image_to_tensor(image: np.ndarray, size: int | tuple[int, int]) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, S, S) in [0, 1], resized without cropping (bilinear, antialiased)."""
    height, width = (size, size) if isinstance(size, int) else size
    pil = Image.fromarray(image)
    if pil.size != (width, height):
        pil = pil.resize((width, height), Image.Resampling.BILINEAR)
    arr = np.asarray(pil, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_image(path: str | Path, size: int | tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Image tensor at the network size and the original (height, width)."""
    rgb = read_image_rgb(path)
    return image_to_tensor(rgb, size), (rgb.shape[0], rgb.shape[1])


def read_mask(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Binary mask (H, W): a pixel is defective where its value is > 127 (soft edges allowed)."""
    source = Path(path)
    if not source.is_file():
        raise MaskError(f"mask not found: {source}")
    try:
        with Image.open(source) as img:
            img.load()
            arr = np.asarray(img.convert("L"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise MaskError(f"cannot read mask {source}: not an image or corrupt") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise MaskError(f"cannot read mask {source}: {exc}") from None
    if expected_hw is not None and arr.shape != tuple(expected_hw):
        raise MaskError(
            f"mask {source} is {arr.shape[1]}x{arr.shape[0]} but its image is "
            f"{expected_hw[1]}x{expected_hw[0]} (width x height)"
        )
    return arr > 127


def image_size_of(path: str | Path) -> tuple[int, int]:
    """(height, width) read from the header only."""
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from None
