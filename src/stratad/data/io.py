"""Reading and validating images and masks.

Every failure becomes a one-line :class:`ImageReadError` / :class:`MaskError` naming the file, so a
corrupt JPEG in a folder of thousands is found without a traceback.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from stratad.errors import DataError, ImageReadError, MaskError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: The only formats Pillow may open (a file's content decides its format, not its name): without
#: this list an EPS upload, or an EPS file named ``.png``, would run Ghostscript on its PostScript.
PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


#: Bit depths an integer image can have; a >8-bit image is scaled by the largest value of its depth.
BIT_DEPTHS = (8, 10, 12, 14, 16)


_HIGH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _stored_above_8_bit(img: Image.Image) -> bool:
    """Whether an opened (not yet loaded) image stores more than 8 bits per sample."""
    if img.mode in _HIGH_MODES:
        return True
    tiles = getattr(img, "tile", None) or []
    args = tiles[0].args if tiles else ""
    return ";16" in str(args[0] if isinstance(args, tuple) and args else args)


def _decode(source: Path | bytes, name: Path | str | None = None) -> np.ndarray:
    """The pixel values as stored: (H, W) or (H, W, C) of uint8, uint16 / int32 (high bit depth) or
    float32. Pillow reads 48-bit RGB by keeping the high byte of each sample (a 12-bit camera image
    turns black), so colour images with 16-bit samples are decoded with OpenCV instead, from bytes
    (a path-safe route for any file name). ``source`` is a file, or the bytes of one (an upload),
    which take the same route; ``name`` is what messages call it."""
    label = name if name is not None else (source if isinstance(source, Path) else "upload")

    def read_bytes() -> bytes:
        return source if isinstance(source, bytes) else source.read_bytes()

    with Image.open(
        io.BytesIO(source) if isinstance(source, bytes) else source, formats=PIL_FORMATS
    ) as opened:
        tiles = getattr(opened, "tile", None) or []
        rawmode = (
            str(tiles[0].args[0] if isinstance(tiles[0].args, tuple) else tiles[0].args) if tiles else ""
        )
        if opened.mode in ("RGB", "RGBA") and ";16" in rawmode:
            data = np.frombuffer(read_bytes(), dtype=np.uint8)
            decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
            if decoded is None:
                raise ImageReadError(f"cannot read image {label}: not an image or corrupt")
            return decoded[..., [2, 1, 0]] if decoded.ndim == 3 else decoded
        if opened.format == "PNG" and opened.mode in ("RGB", "L") and not rawmode.endswith(";16"):
            # 8-bit PNG, the common case: OpenCV decodes it ~1.7x faster than Pillow, to the same
            # pixels (lossless; IMREAD_UNCHANGED applies no orientation, gamma or colour conversion).
            decoded = cv2.imdecode(np.frombuffer(read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
            if decoded is not None and decoded.dtype == np.uint8:
                if decoded.ndim == 2 and opened.mode == "L":
                    return decoded
                if decoded.ndim == 3 and decoded.shape[2] == 3 and opened.mode == "RGB":
                    return decoded[..., ::-1]
        opened.load()
        mode = opened.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            return np.asarray(opened, dtype=np.uint16)
        if mode == "I":
            return np.asarray(opened, dtype=np.int64)
        if mode == "F":
            return np.asarray(opened, dtype=np.float32)
        return np.asarray(opened.convert("RGB"), dtype=np.uint8)


def native_bit_depth(values: np.ndarray, source: Path | str = "image") -> int:
    """The smallest of :data:`BIT_DEPTHS` that holds every value of an integer image (8 for uint8)."""
    if values.dtype == np.uint8:
        return 8
    top = int(values.max()) if values.size else 0
    if int(values.min(initial=0)) < 0 or top > 2**16 - 1:
        raise ImageReadError(
            f"image {source} has integer values outside 0..65535; stratad reads images of at most 16 bits"
        )
    return next(d for d in BIT_DEPTHS if top <= 2**d - 1)


def _to_uint8(values: np.ndarray, bit_depth: int | None, source: Path | str) -> np.ndarray:
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0, 0)
        if not finite.all() or low < 0.0 or high > 1.0:
            raise ImageReadError(
                f"float image {source} has values in [{low:g}, {high:g}]"
                f"{'' if finite.all() else ' and non-finite values'}; stratad reads float images "
                "with values in [0, 1] only: rescale it, or save it as an 8- or 16-bit image"
            )
        scaled = values * 255.0
    elif values.dtype == np.uint8:
        return values
    else:
        depth = native_bit_depth(values, source) if bit_depth is None else bit_depth
        top = int(values.max()) if values.size else 0
        if top > 2**depth - 1:
            raise ImageReadError(
                f"image {source} has values up to {top}, above the {depth}-bit range (0..{2**depth - 1}) "
                "this data is read with (the depth of the training images unless --bit-depth sets it); "
                f"fit with --bit-depth {native_bit_depth(values, source)} or more"
            )
        scaled = values.astype(np.float64) * (255.0 / (2**depth - 1))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _rgb(values: np.ndarray) -> np.ndarray:
    if values.ndim == 2:
        return np.repeat(values[..., None], 3, axis=-1)
    if values.shape[-1] == 1:
        return np.repeat(values, 3, axis=-1)
    return np.ascontiguousarray(values[..., :3])


def read_image_raw(path: str | Path) -> np.ndarray:
    """(H, W, 3) pixel values as stored (uint8, uint16 / int64 for high bit depths, float32)."""
    source = Path(path)
    if not source.is_file():
        raise ImageReadError(f"image not found: {source}")
    try:
        values = _rgb(_decode(source))
    except UnidentifiedImageError:
        raise ImageReadError(f"cannot read image {source}: not an image or corrupt") from None
    except (OSError, ValueError, SyntaxError, cv2.error) as exc:
        raise ImageReadError(f"cannot read image {source}: {exc}") from None
    if values.ndim != 3 or values.shape[0] == 0 or values.shape[1] == 0:
        raise ImageReadError(f"image {source} is empty")
    return values


def read_image_rgb(path: str | Path, bit_depth: int | None = None) -> np.ndarray:
    """Read an image as uint8 (H, W, 3); grayscale is replicated, alpha dropped.

    Images of more than 8 bits per sample are scaled by the largest value of ``bit_depth`` bits
    (``2**bit_depth - 1`` maps to 255), so 12-bit data in a 16-bit file keeps its brightness. With
    ``bit_depth=None`` an image uses its own :func:`native_bit_depth`; a pipeline fixes one depth for
    all its images from the training set (:func:`detect_bit_depth`). A value above the depth's range
    is an error, never a silent clip. Float images must hold values in [0, 1].
    """
    source = Path(path)
    return _to_uint8(read_image_raw(source), check_bit_depth(bit_depth), source)


def check_bit_depth(bit_depth: int | None) -> int | None:
    if bit_depth is not None and bit_depth not in BIT_DEPTHS:
        raise DataError(f"bit depth must be one of {', '.join(map(str, BIT_DEPTHS))}, got {bit_depth}")
    return bit_depth


def detect_bit_depth(paths: Iterable[str | Path]) -> int:
    """The automatic ``--bit-depth`` rule: the smallest of 8, 10, 12, 14, 16 bits that holds the largest
    value over all ``paths`` (the training images). 8-bit files are recognised from their header alone."""
    depth = 8
    for path in paths:
        source = Path(path)
        try:
            with Image.open(source, formats=PIL_FORMATS) as img:
                if not _stored_above_8_bit(img):
                    continue
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            continue  # reported by the reader with its own message
        values = read_image_raw(source)
        if values.dtype.kind != "f":
            depth = max(depth, native_bit_depth(values, source))
    return depth


def resize_rgb(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """THE resize of stratad's inputs: uint8 (H, W, 3) -> uint8 (S, S, 3) (or (height, width)),
    bilinear with Pillow's antialiasing, no cropping; unchanged when already at that size."""
    height, width = (size, size) if isinstance(size, int) else size
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def read_image_resized(
    path: str | Path, size: int | tuple[int, int], bit_depth: int | None = None
) -> np.ndarray:
    """THE image loader: :func:`read_image_rgb` then :func:`resize_rgb` (uint8 (S, S, 3))."""
    return resize_rgb(read_image_rgb(path, bit_depth), size)


def image_to_tensor(image: np.ndarray, size: int | tuple[int, int]) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, S, S) in [0, 1], resized by :func:`resize_rgb`."""
    import torch

    arr = resize_rgb(image, size).astype(np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def uint8_batch(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images of one size -> one uint8 tensor (N, 3, H, W)."""
    import torch

    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def load_image(
    path: str | Path, size: int | tuple[int, int], bit_depth: int | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Image tensor at the network size and the original (height, width)."""
    rgb = read_image_rgb(path, bit_depth)
    return image_to_tensor(rgb, size), (rgb.shape[0], rgb.shape[1])


def read_mask(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Binary mask (H, W): a pixel is defective where any channel is > 127 (8-bit; the middle of the
    range for 16-bit masks), so soft edges and coloured masks (red on black) both work. A mask whose
    values are only 0 and 1 is a label image: 1 is defective. Any other mask whose non-zero values all
    stay at or below the threshold is refused rather than read as empty."""
    source = Path(path)
    if not source.is_file():
        raise MaskError(f"mask not found: {source}")
    try:
        values = _decode(source)
    except UnidentifiedImageError:
        raise MaskError(f"cannot read mask {source}: not an image or corrupt") from None
    except (OSError, ValueError, SyntaxError, cv2.error, ImageReadError) as exc:
        raise MaskError(f"cannot read mask {source}: {exc}") from None
    if values.ndim == 3:
        values = values.max(axis=-1)
    if values.dtype.kind == "f":
        values = np.nan_to_num(values) * 255.0
    threshold = 32767 if values.dtype.kind in "iu" and values.dtype.itemsize > 1 else 127
    top = float(values.max()) if values.size else 0.0
    if top == 1.0:
        mask = values >= 1
    elif 0.0 < top <= threshold:
        raise MaskError(
            f"mask {source} has non-zero values only up to {top:g}; a defect pixel must be > {threshold} "
            "(or the mask holds only 0 and 1)"
        )
    else:
        mask = values > threshold
    if expected_hw is not None and mask.shape != tuple(expected_hw):
        raise MaskError(
            f"mask {source} is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{expected_hw[1]}x{expected_hw[0]} (width x height)"
        )
    return mask


def image_size_of(path: str | Path) -> tuple[int, int]:
    """(height, width) read from the header only."""
    try:
        with Image.open(path, formats=PIL_FORMATS) as img:
            return img.size[1], img.size[0]
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from None


def decode_image_bytes(data: bytes, bit_depth: int | None = None, name: str = "upload") -> np.ndarray:
    """:func:`read_image_rgb` for the bytes of an image file (an HTTP upload): uint8 (H, W, 3), decoded
    and scaled exactly as the same file on disk would be. Empty or non-image bytes are one
    :class:`ImageReadError` calling the image ``name``."""
    if not data:
        raise ImageReadError(f"image {name} is empty (0 bytes)")
    try:
        values = _rgb(_decode(bytes(data), name))
    except UnidentifiedImageError:
        raise ImageReadError(f"cannot read image {name}: not an image or corrupt") from None
    except Image.DecompressionBombError as exc:  # not an OSError: a header claiming ~180 M+ pixels
        raise ImageReadError(f"cannot read image {name}: {exc}") from None
    except (OSError, ValueError, SyntaxError, cv2.error) as exc:
        raise ImageReadError(f"cannot read image {name}: {_one_line(exc)}") from None
    if values.ndim != 3 or values.shape[0] == 0 or values.shape[1] == 0:
        raise ImageReadError(f"image {name} is empty")
    return _to_uint8(values, check_bit_depth(bit_depth), name)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def content_digest(path: str | Path) -> str:
    """16 hex digits of the SHA-256 of a file's bytes: the same image under any name or folder (a
    copied dataset) has the same digest. A model file records those of the images it has seen."""
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ImageReadError(f"cannot read image {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()[:16]
