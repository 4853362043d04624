"""Input checks shared by the image- and pixel-level metrics.

Metrics sit at the end of every experiment, so a silently wrong input (masks of 0/255, a map resized
to the wrong shape, NaN scores) would corrupt a whole results table; everything is checked here once,
at the boundary, and reported as one sentence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from stratad.errors import DataError, MaskError

# Maps and masks may come as a list of per-image arrays (sizes may differ) or as one (N, H, W) array.
ArraySequence = Sequence[npt.ArrayLike] | npt.NDArray[np.generic]

# bool, signed int, unsigned int, float: the dtypes whose values order like real numbers.
_REAL_KINDS = "biuf"


def check_labels(labels: npt.ArrayLike, name: str = "labels") -> npt.NDArray[np.bool_]:
    """Return ``labels`` as a 1-D boolean array (True = anomalous); only 0/1 or bool are accepted."""
    array = np.asarray(labels)
    if array.ndim != 1:
        raise DataError(f"{name} must be a 1-D sequence of 0/1 values, got an array of shape {array.shape}.")
    if array.dtype == np.bool_:
        return array
    if array.dtype.kind not in _REAL_KINDS:
        raise DataError(f"{name} must hold 0 (normal) or 1 (anomalous), got values of type {array.dtype}.")
    valid = (array == 0) | (array == 1)
    if not valid.all():
        bad = array[~valid][0]
        raise DataError(f"{name} must hold only 0 (normal) or 1 (anomalous), but contains {bad!r}.")
    return array == 1


def check_scores(scores: npt.ArrayLike, n_expected: int, name: str = "scores") -> npt.NDArray[np.float64]:
    """Return ``scores`` as a finite 1-D float64 array of length ``n_expected``."""
    array = np.asarray(scores)
    if array.dtype.kind not in _REAL_KINDS:
        raise DataError(f"{name} must be real numbers, got values of type {array.dtype}.")
    if array.ndim != 1:
        raise DataError(f"{name} must be a 1-D sequence, got an array of shape {array.shape}.")
    if array.shape[0] != n_expected:
        raise DataError(f"got {array.shape[0]} {name} for {n_expected} labels; pass one score per image.")
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        index = int(np.flatnonzero(~np.isfinite(array))[0])
        raise DataError(f"{name}[{index}] is {array[index]}; every score must be a finite number.")
    return array


def check_labels_scores(
    labels: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """Validate one image-level (labels, scores) pair."""
    checked_labels = check_labels(labels)
    return checked_labels, check_scores(scores, checked_labels.shape[0])


def check_fpr_limit(fpr_limit: float) -> float:
    """The AU-PRO integration limit must be a false-positive rate in (0, 1]."""
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise DataError(f"fpr_limit must be in (0, 1], got {fpr_limit}.")
    return limit


def _check_mask(mask: npt.NDArray[np.generic], index: int) -> npt.NDArray[np.bool_]:
    if mask.dtype == np.bool_:
        return mask.astype(np.bool_, copy=False)  # a no-op view; spelled out for the type checker
    if mask.dtype.kind not in _REAL_KINDS:
        raise MaskError(f"mask {index} must be boolean, got values of type {mask.dtype}.")
    # Masks read from PNG are often 0/255 and resized ones may hold interpolated values; guessing a
    # binarisation threshold here would hide that, so only exact 0/1 masks are accepted.
    if not ((mask == 0) | (mask == 1)).all():
        raise MaskError(f"mask {index} holds values other than 0 and 1; binarise it first (e.g. mask > 0).")
    return mask == 1


def check_maps(shapes: Sequence[tuple[int, ...]], maps: ArraySequence) -> list[npt.NDArray[np.generic]]:
    """Check one anomaly map per ground-truth shape: count, shape, dtype and finiteness (no copies)."""
    map_list = list(maps)
    if len(shapes) != len(map_list):
        raise MaskError(f"got {len(shapes)} masks but {len(map_list)} anomaly maps; pass one mask per map.")
    if not map_list:
        raise DataError("no masks and anomaly maps were given; pixel metrics need at least one image.")
    checked = []
    for index, (shape, raw_map) in enumerate(zip(shapes, map_list, strict=True)):
        score_map = np.asarray(raw_map)
        if score_map.ndim != 2:
            raise DataError(f"anomaly map {index} must be 2-D (H, W), got shape {score_map.shape}.")
        if tuple(shape) != score_map.shape:
            raise MaskError(
                f"mask {index} has shape {tuple(shape)} but anomaly map {index} has shape {score_map.shape}; "
                "resize the map to the mask."
            )
        if score_map.dtype.kind not in _REAL_KINDS:
            raise DataError(f"anomaly map {index} must hold real numbers, got type {score_map.dtype}.")
        if score_map.dtype.kind == "f" and not np.isfinite(score_map).all():
            raise DataError(
                f"anomaly map {index} contains NaN or infinite scores; every score must be finite."
            )
        checked.append(score_map)
    return checked


def check_masks(masks: ArraySequence) -> list[npt.NDArray[np.bool_]]:
    """Every ground-truth mask as a boolean array (only non-boolean masks are copied)."""
    return [_check_mask(np.asarray(mask), index) for index, mask in enumerate(masks)]


def check_masks_maps(
    masks: ArraySequence, maps: ArraySequence
) -> list[tuple[npt.NDArray[np.bool_], npt.NDArray[np.generic]]]:
    """Pair every ground-truth mask with its anomaly map, checking count, shape, dtype and finiteness.

    Maps are returned without copying (views of the caller's arrays); only non-boolean masks are copied.
    """
    mask_list = [np.asarray(mask) for mask in masks]
    map_list = check_maps([mask.shape for mask in mask_list], maps)
    return [
        (_check_mask(mask, index), m) for index, (mask, m) in enumerate(zip(mask_list, map_list, strict=True))
    ]
