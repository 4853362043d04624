"""Patch-level features: a network run on every small patch of an image, as a dense feature grid.

The protocol of patch-level Gaussian density estimation (CutPaste, Li et al. CVPR 2021; DS2's
localisation evaluation): 32 x 32 patches cut at stride 4 from a 256 x 256 image (57 x 57 patches), each
patch encoded on its own and globally average pooled. :func:`extract_patch_features` returns these
features as ``(B, C, 57, 57)`` tensors, so any detector that consumes dense feature maps can use them;
:func:`patch_scores_to_image` spreads a ``(57, 57)`` score grid back onto the 256 x 256 image with a
Gaussian kernel over each patch's footprint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from stratad.errors import DataError
from stratad.features.patch import global_pool

ExtractFn = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


def patch_grid(height: int, width: int, patch_size: int, stride: int) -> tuple[int, int]:
    """Number of patch rows and columns cut from a ``height`` x ``width`` image."""
    if patch_size < 1 or stride < 1:
        raise DataError(f"patch_size and stride must be >= 1, got {patch_size} and {stride}")
    if height < patch_size or width < patch_size:
        raise DataError(
            f"a {height}x{width} image is smaller than a {patch_size}-pixel patch; use a smaller patch"
        )
    return (height - patch_size) // stride + 1, (width - patch_size) // stride + 1


@torch.no_grad()
def extract_patch_features(
    extract_fn: ExtractFn,
    images: torch.Tensor,
    patch_size: int = 32,
    stride: int = 4,
    batch_size: int = 512,
    input_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Features of every ``patch_size`` patch at ``stride``, as ``{node: (B, C, gh, gw)}`` float32.

    ``images``: ``(B, 3, H, W)`` in [0, 1]; ``extract_fn`` receives batches of patch images
    ``(n, 3, s, s)`` (normalisation is its job) and returns ``{node: (n, C, h, w) or (n, C)}``. Every
    output is globally average pooled, and the patch at grid position (i, j) covers pixels
    ``[i*stride, i*stride + patch_size)`` x ``[j*stride, j*stride + patch_size)``. ``input_size``
    resizes each patch (bilinear) before the network; None keeps ``patch_size``. Patches are batched
    ``batch_size`` at a time across images; ``progress`` receives the number of patches done per batch.
    """
    if images.ndim != 4:
        raise DataError(f"images must be a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if input_size is not None and input_size < 1:
        raise DataError(f"input_size must be a positive number of pixels, got {input_size}")
    b = int(images.shape[0])
    gh, gw = patch_grid(int(images.shape[-2]), int(images.shape[-1]), patch_size, stride)
    per_image = gh * gw
    # (B, 3, gh, gw, p, p): a view, so only one batch of patches is ever copied.
    windows = images.unfold(2, patch_size, stride).unfold(3, patch_size, stride)
    out: dict[str, torch.Tensor] = {}
    for start in range(0, b * per_image, batch_size):
        flat = torch.arange(start, min(start + batch_size, b * per_image))
        img, pos = flat // per_image, flat % per_image
        patches = windows[img, :, pos // gw, pos % gw]  # (n, 3, p, p)
        if input_size is not None and input_size != patch_size:
            patches = F.interpolate(
                patches, size=(input_size, input_size), mode="bilinear", align_corners=False
            )
        feats = extract_fn(patches.contiguous())
        for node, x in feats.items():
            pooled = global_pool(x.detach()).float().cpu()
            if node not in out:
                out[node] = torch.empty(b * per_image, pooled.shape[1], dtype=torch.float32)
            out[node][flat] = pooled
        if progress is not None:
            progress(int(flat.numel()))
    return {node: x.reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous() for node, x in out.items()}


def patch_scores_to_image(
    scores: torch.Tensor,
    patch_size: int = 32,
    stride: int = 4,
    sigma: float = 4.0,
    image_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Spread patch scores ``(B, gh, gw)`` over the image ``(B, H, W)``: Gaussian receptive-field upsampling.

    Every pixel gets the average of the scores of the patches covering it, weighted by a Gaussian
    (``sigma`` pixels) centred on each patch (CutPaste's localisation protocol). The covered area is
    ``(gh - 1) * stride + patch_size`` pixels (256 for 57 patches); a larger ``image_size`` is filled by
    repeating the border.
    """
    if scores.ndim != 3:
        raise DataError(f"patch scores must be (B, gh, gw), got shape {tuple(scores.shape)}")
    coords = torch.arange(patch_size, dtype=torch.float64) - (patch_size - 1) / 2
    g = (
        torch.exp(-coords.square() / (2 * sigma * sigma))
        if sigma > 0
        else torch.ones(patch_size, dtype=torch.float64)
    )
    kernel = (g[:, None] * g[None, :]).float()[None, None]
    x = scores.float()[:, None]
    weighted = F.conv_transpose2d(x, kernel, stride=stride)
    coverage = F.conv_transpose2d(torch.ones_like(x[:1]), kernel, stride=stride)
    out = weighted / coverage
    if image_size is not None:
        pad_h, pad_w = image_size[0] - out.shape[-2], image_size[1] - out.shape[-1]
        if pad_h < 0 or pad_w < 0:
            raise DataError(
                f"patch scores cover {tuple(out.shape[-2:])} pixels, more than image_size {image_size}"
            )
        if pad_h or pad_w:
            out = F.pad(out, (0, pad_w, 0, pad_h), mode="replicate")
    return out[:, 0]
