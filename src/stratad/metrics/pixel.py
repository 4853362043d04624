"""Pixel-level metrics: pixel AUROC, the PRO curve and its normalised area (AU-PRO), pixel F1-max.

Semantics follow the official MVTec AD evaluation code (Bergmann et al., ``pro_curve_util.py`` and
``generic_util.py``): regions are 8-connected components of each ground-truth mask, the FPR counts
every defect-free pixel of every test image (defect-free images included), PRO at a threshold is the
mean over all regions of the fraction of the region at or above it, tied scores form one curve step,
and the curve is integrated with the trapezoid rule up to ``fpr_limit`` (interpolating the PRO at the
limit) and divided by ``fpr_limit``. Unlike anomalib, the area is divided by the limit itself, not by
the last FPR the curve happened to reach, so AU-PRO values are comparable with published tables.

Implementation, built for ~100 M pixels on a small machine. The official code argsorts every pixel
(an int64 index per pixel plus float64 PRO weights per pixel, several GB at that size). Here only the
defect-free scores are sorted, in place, with no index array; the defect pixels (a few percent) are
argsorted with their PRO weights. Every statistic is then read at the distinct defect scores by
binary search into the sorted defect-free scores:

* FPR and TPR only change together at a defect score, so AUROC is the Mann-Whitney statistic with
  ties counted one half, which equals the area of the tie-grouped ROC curve that sklearn integrates;
* F1 can only peak at a threshold equal to a defect score (lowering it further adds false positives
  only), so the maximum over defect scores is the maximum over all thresholds;
* between two defect scores the PRO curve is flat, so its official points can be reduced to two per
  distinct defect score ("just above" and "at" the score) without changing the piecewise-linear
  curve, hence neither its area nor its value at ``fpr_limit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from stratad.errors import DataError
from stratad.metrics._validation import (
    ArraySequence,
    check_fpr_limit,
    check_maps,
    check_masks,
    check_masks_maps,
)

FloatArray = npt.NDArray[np.float64]

# 8-connectivity, as in the official evaluation: diagonal neighbours belong to the same defect region.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_EIGHT_CONNECTED.flags.writeable = False


@dataclass(frozen=True)
class PixelMetrics:
    """All pixel-level metrics of one test set, computed from a single sort of the scores."""

    pixel_auroc: float
    aupro: float
    pixel_f1_max: float
    fpr_limit: float


@dataclass(frozen=True)
class _SortedPixelScores:
    """Scores of a test set arranged so that every curve statistic is a binary search away.

    ``run_values[j]`` are the distinct defect-pixel scores in ascending order, ``run_starts[j]`` the
    number of defect pixels scoring below ``run_values[j]``, ``normals_below_run[j]`` and
    ``normals_up_to_run[j]`` the number of defect-free pixels scoring < and <= ``run_values[j]``,
    and ``pro_at[j]`` the PRO when thresholding at ``run_values[j]`` (score >= threshold), with
    ``pro_at[-1] == 0`` for a threshold above every defect score.
    """

    normal_scores: npt.NDArray[np.floating]  # every defect-free pixel's score, ascending
    run_values: npt.NDArray[np.floating]
    run_starts: npt.NDArray[np.intp]
    normals_below_run: npt.NDArray[np.int64]
    normals_up_to_run: npt.NDArray[np.int64]
    pro_at: FloatArray
    n_defect: int
    n_regions: int

    @property
    def n_normal(self) -> int:
        return int(self.normal_scores.shape[0])

    def normals_below(self, thresholds: npt.NDArray[np.floating], *, inclusive: bool) -> npt.NDArray[np.intp]:
        """Count defect-free pixels scoring < (or <= when ``inclusive``) each threshold."""
        side: Literal["left", "right"] = "right" if inclusive else "left"
        return np.searchsorted(self.normal_scores, thresholds, side=side)


@dataclass(frozen=True, eq=False)
class PixelTruth:
    """The ground-truth masks of one test set, split into defect-free and defect pixels and labelled
    into 8-connected regions once, to score many sets of anomaly maps against them (a feature
    selection sweep scores every candidate node's maps against the same synthetic masks).

    Pixels are numbered by image, then row-major. ``defect`` marks the defect pixels,
    ``defect_weights`` holds 1 / (size of the pixel's region) per defect pixel in that order.
    """

    shapes: tuple[tuple[int, int], ...]
    defect: npt.NDArray[np.bool_]
    defect_weights: FloatArray
    defect_counts: tuple[int, ...]
    n_regions: int

    @classmethod
    def from_masks(cls, masks: ArraySequence, stride: int = 1) -> PixelTruth:
        """Boolean (or exact 0/1) masks, one per test image; images may differ in size.

        ``stride`` > 1 keeps only every ``stride``-th row and column (``mask[::stride, ::stride]``;
        give the maps the same slicing): an estimate of the metrics from a quarter of the pixels
        for stride 2. Regions are still found at full resolution, and each keeps the weight of its
        sampled pixels, so a region split or thinned by the lattice counts once, as it should.
        """
        if stride < 1:
            raise DataError(f"stride must be >= 1, got {stride}.")
        checked = check_masks(masks)
        if not checked:
            raise DataError("no masks were given; pixel metrics need at least one image.")
        return cls._from_checked(checked, stride)

    @classmethod
    def _from_checked(cls, masks: list[npt.NDArray[np.bool_]], stride: int = 1) -> PixelTruth:
        for index, mask in enumerate(masks):
            if mask.ndim != 2:
                raise DataError(f"mask {index} must be 2-D (H, W), got shape {mask.shape}.")
        sampled = [mask[::stride, ::stride] for mask in masks]
        defect = np.concatenate([mask.ravel() for mask in sampled])
        counts = tuple(int(np.count_nonzero(mask)) for mask in sampled)
        n_defect = sum(counts)
        if n_defect == 0:
            raise DataError(
                "the ground-truth masks mark no defect pixel, so pixel metrics are undefined; "
                "evaluate image scores only or include anomalous images with masks."
            )
        if n_defect == defect.shape[0]:
            raise DataError("every pixel is marked as a defect, so no false-positive rate can be computed.")
        # Each defect pixel carries 1 / (size of its region): summing these over the pixels above a
        # threshold and dividing by the number of regions gives the mean per-region overlap.
        weights = np.empty(n_defect, dtype=np.float64)
        n_regions = at = 0
        for mask, kept, n_kept in zip(masks, sampled, counts, strict=True):
            if n_kept == 0:
                continue
            regions, _ = ndimage.label(mask, structure=_EIGHT_CONNECTED)
            region_ids = regions[::stride, ::stride][kept]
            sizes = np.bincount(region_ids)
            weights[at : at + n_kept] = 1.0 / sizes[region_ids]
            at += n_kept
            n_regions += int(np.count_nonzero(sizes))
        shapes = tuple((int(mask.shape[0]), int(mask.shape[1])) for mask in sampled)
        return cls(shapes, defect, weights, counts, n_regions)

    @property
    def n_defect(self) -> int:
        return int(self.defect_weights.shape[0])


def _stacked(maps: list[npt.NDArray[np.generic]]) -> npt.NDArray[np.generic] | None:
    """The maps' scores as one flat array without a copy, when they are the images of one C-ordered
    (N, H, W) array, in order (as a detector returns them); else None."""
    base = maps[0].base
    if not (isinstance(base, np.ndarray) and base.ndim == 3 and base.flags.c_contiguous):
        return None
    if base.shape[0] != len(maps):
        return None
    for index, score_map in enumerate(maps):
        if score_map.base is not base or score_map.ctypes.data != base[index].ctypes.data:
            return None
        if score_map.shape != base.shape[1:] or not score_map.flags.c_contiguous:
            return None
    return base.reshape(-1)


def _sort_pixel_scores(truth: PixelTruth, maps: list[npt.NDArray[np.generic]]) -> _SortedPixelScores:
    # Work in the narrowest float type that represents every input exactly: float32 maps stay float32
    # (half the memory of float64); float64 maps are not rounded, which could merge distinct scores
    # into ties and change the result.
    dtype = np.result_type(np.float32, *(score_map.dtype for score_map in maps))
    n_defect, n_regions = truth.n_defect, truth.n_regions
    n_normal = truth.defect.shape[0] - n_defect
    normal = ~truth.defect
    stacked = _stacked(maps)
    if stacked is not None:
        normal_scores = stacked[normal].astype(dtype, copy=False)
        defect_scores = stacked[truth.defect].astype(dtype, copy=False)
    else:
        normal_scores = np.empty(n_normal, dtype=dtype)
        defect_scores = np.empty(n_defect, dtype=dtype)
        pixel = normal_at = defect_at = 0
        for score_map, n_mask in zip(maps, truth.defect_counts, strict=True):
            flat = score_map.ravel()
            n_image_normal = flat.shape[0] - n_mask
            is_normal = normal[pixel : pixel + flat.shape[0]]
            normal_scores[normal_at : normal_at + n_image_normal] = flat[is_normal]
            if n_mask:
                defect_scores[defect_at : defect_at + n_mask] = flat[~is_normal]
            pixel += flat.shape[0]
            normal_at += n_image_normal
            defect_at += n_mask
    defect_weights = truth.defect_weights

    normal_scores.sort()
    order = np.argsort(defect_scores)
    defect_scores = defect_scores[order]
    defect_weights = defect_weights[order]
    del order

    starts_run = np.empty(n_defect, dtype=bool)
    starts_run[0] = True
    np.not_equal(defect_scores[1:], defect_scores[:-1], out=starts_run[1:])
    run_starts = np.flatnonzero(starts_run)
    run_values = defect_scores[run_starts]
    run_weights = np.add.reduceat(defect_weights, run_starts)

    pro_at = np.zeros(run_values.shape[0] + 1, dtype=np.float64)
    pro_at[:-1] = np.cumsum(run_weights[::-1])[::-1] / n_regions
    # At the lowest defect score every region is fully covered: PRO is exactly 1 by definition, and
    # pinning it removes the cumsum's rounding (the official code clips to 1 for the same reason).
    pro_at[0] = 1.0
    np.clip(pro_at, 0.0, 1.0, out=pro_at)
    # Binary searches into ~100 M sorted scores miss the cache at every step: do them once here, and
    # search again from the right only for the few defect scores that some defect-free pixel shares.
    below = np.searchsorted(normal_scores, run_values, side="left").astype(np.int64)
    up_to = below.copy()
    in_range = np.flatnonzero(below < n_normal)
    tied = in_range[normal_scores[below[in_range]] == run_values[in_range]]
    up_to[tied] = np.searchsorted(normal_scores, run_values[tied], side="right")
    return _SortedPixelScores(
        normal_scores, run_values, run_starts, below, up_to, pro_at, n_defect, n_regions
    )


def _auroc(scores: _SortedPixelScores) -> float:
    run_sizes = np.diff(np.append(scores.run_starts, scores.n_defect)).astype(np.int64)
    # Mann-Whitney U with ties worth one half, kept in integers (< 2**63 for any realistic test set)
    # and divided once, so the only rounding is the final division.
    twice_u = int(np.dot(run_sizes, scores.normals_below_run + scores.normals_up_to_run))
    return twice_u / (2 * scores.n_defect * scores.n_normal)


def _f1_max(scores: _SortedPixelScores) -> float:
    true_positives = (scores.n_defect - scores.run_starts).astype(np.float64)
    false_positives = (scores.n_normal - scores.normals_below_run).astype(np.float64)
    # F1 = 2 P R / (P + R) = 2 TP / (TP + FP + #defect pixels); TP >= 1 here, so no zero division.
    f1 = 2.0 * true_positives / (true_positives + false_positives + scores.n_defect)
    return float(f1.max())


def _pro_curve_breakpoints(scores: _SortedPixelScores) -> tuple[FloatArray, FloatArray]:
    """The PRO curve reduced to the points where its slope can change, in increasing FPR.

    For each distinct defect score (descending) the curve first runs flat up to the FPR of the
    defect-free pixels strictly above the score, then steps to the point after the score's pixels
    (slanted when defect-free pixels share the score); it starts at (0, 0) and ends at (1, 1).
    """
    n_normal = scores.n_normal
    n_runs = scores.run_values.shape[0]
    fpr_above = (n_normal - scores.normals_up_to_run) / n_normal
    fpr_at = (n_normal - scores.normals_below_run) / n_normal
    fprs = np.empty(2 * n_runs + 2, dtype=np.float64)
    pros = np.empty(2 * n_runs + 2, dtype=np.float64)
    fprs[0] = pros[0] = 0.0
    fprs[-1] = pros[-1] = 1.0
    fprs[1:-1:2] = fpr_above[::-1]
    pros[1:-1:2] = scores.pro_at[1:][::-1]
    fprs[2:-1:2] = fpr_at[::-1]
    pros[2:-1:2] = scores.pro_at[:-1][::-1]
    return fprs, pros


def _aupro(scores: _SortedPixelScores, fpr_limit: float) -> float:
    fprs, pros = _pro_curve_breakpoints(scores)
    return trapezoid(fprs, pros, x_max=fpr_limit) / fpr_limit


def trapezoid(x: npt.ArrayLike, y: npt.ArrayLike, x_max: float | None = None) -> float:
    """Area under the piecewise-linear curve through (x, y), optionally only up to ``x_max``.

    Same rule as the official MVTec ``trapezoid``: ``x`` is non-decreasing (repeated values allowed,
    their order in ``y`` matters), and when ``x_max`` falls between two samples the curve is
    linearly interpolated there. Unlike the official function, non-finite values are an error
    rather than silently dropped.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.ndim != 1 or xs.shape != ys.shape or xs.shape[0] < 2:
        raise DataError(f"x and y must be 1-D of equal length >= 2, got shapes {xs.shape} and {ys.shape}.")
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise DataError("x and y must be finite to integrate the curve.")
    if (np.diff(xs) < 0).any():
        raise DataError("x must be sorted in non-decreasing order to integrate the curve.")
    correction = 0.0
    if x_max is not None:
        if not xs[0] <= x_max <= xs[-1]:
            raise DataError(f"x_max={x_max} lies outside the curve's range [{xs[0]}, {xs[-1]}].")
        end = int(np.searchsorted(xs, x_max, side="right"))
        if xs[end - 1] != x_max:
            # x_max lies strictly between xs[end - 1] and xs[end]: add the partial trapezoid.
            x0, x1, y0, y1 = xs[end - 1], xs[end], ys[end - 1], ys[end]
            y_at_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
            correction = 0.5 * (y0 + y_at_max) * (x_max - x0)
        xs, ys = xs[:end], ys[:end]
    return float(np.sum(0.5 * (ys[1:] + ys[:-1]) * np.diff(xs)) + correction)


def pixel_metrics_for_truth(
    truth: PixelTruth, maps: list[npt.NDArray[np.generic]], fpr_limit: float
) -> PixelMetrics:
    """:func:`pixel_metrics` on maps already checked against ``truth`` (shared with ``evaluate``)."""
    scores = _sort_pixel_scores(truth, maps)
    return PixelMetrics(
        pixel_auroc=_auroc(scores),
        aupro=_aupro(scores, fpr_limit),
        pixel_f1_max=_f1_max(scores),
        fpr_limit=fpr_limit,
    )


def pixel_metrics(
    masks: ArraySequence | PixelTruth, maps: ArraySequence, fpr_limit: float = 0.3
) -> PixelMetrics:
    """Pixel AUROC, AU-PRO up to ``fpr_limit`` and pixel F1-max, all from one sort of the scores.

    ``masks`` are boolean ground truths (True = defect), or a :class:`PixelTruth` made from them
    once for many calls, and ``maps`` anomaly maps of the same shape, one pair per test image;
    images may differ in size. Float32 maps keep the peak memory at about one extra copy of the maps.
    """
    limit = check_fpr_limit(fpr_limit)
    truth, checked = truth_and_maps(masks, maps)
    return pixel_metrics_for_truth(truth, checked, limit)


def truth_and_maps(
    masks: ArraySequence | PixelTruth, maps: ArraySequence
) -> tuple[PixelTruth, list[npt.NDArray[np.generic]]]:
    if isinstance(masks, PixelTruth):
        return masks, check_maps(masks.shapes, maps)
    pairs = check_masks_maps(masks, maps)
    return PixelTruth._from_checked([mask for mask, _ in pairs]), [m for _, m in pairs]


def pixel_auroc(masks: ArraySequence, maps: ArraySequence) -> float:
    """Area under the pixel-level ROC curve over all pixels of all images (ties form one ROC step)."""
    return _auroc(_sort_pixel_scores(*truth_and_maps(masks, maps)))


def aupro(masks: ArraySequence, maps: ArraySequence, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve up to ``fpr_limit``, divided by ``fpr_limit`` so that it lies in [0, 1]."""
    limit = check_fpr_limit(fpr_limit)
    return _aupro(_sort_pixel_scores(*truth_and_maps(masks, maps)), limit)


def pro_curve_breakpoints(
    truth: PixelTruth, maps: list[npt.NDArray[np.generic]]
) -> tuple[FloatArray, FloatArray]:
    """The PRO curve ``(fprs, pros)`` in increasing FPR, reduced to the points where its slope can
    change (two per distinct defect score): the curve AU-PRO integrates, small enough to plot.
    ``truth`` and ``maps`` as :func:`truth_and_maps` returns them."""
    return _pro_curve_breakpoints(_sort_pixel_scores(truth, maps))


def pro_curve(masks: ArraySequence, maps: ArraySequence) -> tuple[FloatArray, FloatArray]:
    """The exact PRO curve ``(fprs, pros)``, one point per distinct score, as the official code returns it.

    Points are ordered by decreasing threshold: the curve starts at (0, 0), has one point after each
    run of equal scores (all pixels >= that score counted), and ends with an extra (1, 1). It holds
    up to one point per pixel; for AU-PRO itself use :func:`aupro`, which needs far less memory.
    """
    scores = _sort_pixel_scores(*truth_and_maps(masks, maps))
    normal = scores.normal_scores
    last_of_run = np.empty(normal.shape[0], dtype=bool)
    last_of_run[-1] = True
    np.not_equal(normal[1:], normal[:-1], out=last_of_run[:-1])
    thresholds = np.union1d(normal[last_of_run], scores.run_values)[::-1]
    fprs = (scores.n_normal - scores.normals_below(thresholds, inclusive=False)) / scores.n_normal
    pros = scores.pro_at[np.searchsorted(scores.run_values, thresholds, side="left")]
    return np.concatenate(([0.0], fprs, [1.0])), np.concatenate(([0.0], pros, [1.0]))
