"""Thresholds: from a target false-positive rate on good images only (distribution-free quantiles, or
the chi-square law of Mahalanobis distances under a Gaussian model), F1-optimal on labelled
validation data; :class:`Calibration`, the thresholds a model file stores, and normalised scores.

Rippel et al. (2020) model normal features as a multivariate Gaussian: the squared Mahalanobis
distance of a normal sample then follows a chi-squared law with ``dim`` degrees of freedom, so a
threshold for a chosen false-positive rate needs no anomalous data and no min-max of normal scores.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from stratad.errors import DataError


def chi2_threshold(dim: int, fpr: float) -> float:
    """Mahalanobis distance exceeded by a fraction ``fpr`` of normal samples in ``dim`` dimensions.

    Equals ``sqrt(chi2.ppf(1 - fpr, df=dim))``.
    """
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise DataError(f"dim must be a positive integer (the feature dimension), got {dim!r}.")
    if not 0.0 < fpr < 1.0:
        raise DataError(f"fpr must be strictly between 0 and 1, got {fpr}.")
    from scipy.stats import chi2

    # isf(fpr) instead of ppf(1 - fpr): for small rates 1 - fpr rounds away the digits that matter.
    return math.sqrt(float(chi2.isf(fpr, df=int(dim))))


def sigma_to_fpr(k: float) -> float:
    """Two-sided normal tail 2 (1 - Phi(k)): the false-positive rate of a "k sigma" working point.

    In one dimension the Mahalanobis distance is |z|, so ``chi2_threshold(1, sigma_to_fpr(k)) == k``;
    in ``dim`` dimensions the same rate gives the threshold with the familiar 1/2/3-sigma meaning.
    """
    if not math.isfinite(k) or k < 0:
        raise DataError(f"k (the number of standard deviations) must be a finite number >= 0, got {k}.")
    from scipy.stats import norm

    # norm.sf(k) instead of 1 - norm.cdf(k): the subtraction cancels for large k.
    return float(2.0 * norm.sf(k))


# -- thresholds from data ------------------------------------------------------------------------------
# The decision rule everywhere: defective when ``score > threshold`` (strictly).


@dataclass(frozen=True)
class QuantileThreshold:
    """A threshold from good scores only (see :func:`quantile_threshold`)."""

    threshold: float
    #: the rank ``k`` (1-based, ascending) of the order statistic used, among ``n`` good scores
    rank: int
    n: int
    #: ``(n + 1 - k) / (n + 1)``: the expected false-positive rate on new good images (<= the target)
    expected_fpr: float
    #: one-sided 95 % upper confidence bound on the false-positive rate this threshold will have
    fpr_upper_95: float


def quantile_threshold(good_scores: np.ndarray, fpr: float) -> QuantileThreshold:
    """The distribution-free threshold for a target false-positive rate from held-out good scores.

    With ``n`` good scores ``x_(1) <= ... <= x_(n)`` exchangeable with future good images, the order
    statistic ``t = x_(k)``, ``k = ceil((n + 1) (1 - fpr))``, is exceeded by a new good image with
    probability at most ``(n + 1 - k) / (n + 1) <= fpr`` (the conformal quantile). The rate a given
    threshold actually has, ``P(X > x_(k))``, is Beta(n + 1 - k, k) distributed over draws of the
    calibration images; its 95 % quantile is reported as ``fpr_upper_95``. The target needs
    ``n >= 1 / fpr - 1`` good scores (99 for 1 %); fewer is refused rather than silently missed.
    """
    from scipy.stats import beta

    scores = np.asarray(good_scores).reshape(-1)
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)
    n = int(scores.size)
    if not 0.0 < fpr < 1.0:
        raise DataError(f"the target false-positive rate must lie strictly between 0 and 1, got {fpr}")
    if n == 0 or not np.isfinite(scores).all():
        raise DataError("a threshold needs the finite scores of at least one good image")
    k = math.ceil((n + 1) * (1.0 - fpr) - 1e-9)
    if k > n:
        need = math.ceil((1.0 - fpr) / fpr - 1e-9)
        raise DataError(
            f"a false-positive rate of {fpr:g} needs at least {need} held-out good images, got {n}: "
            "hold out more training images or target a larger rate"
        )
    k = max(k, 1)
    # the k-th smallest without a full sort or a float64 copy (pixel scores run to millions)
    kth = float(np.partition(scores, k - 1)[k - 1])
    return QuantileThreshold(
        threshold=kth,
        rank=k,
        n=n,
        expected_fpr=(n + 1 - k) / (n + 1),
        fpr_upper_95=float(beta.ppf(0.95, n + 1 - k, k)),
    )


def f1_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The threshold with the best F1 on labelled scores (1 = defective), and that F1.

    Returned so that ``score > threshold`` flags exactly the scores ``>=`` the best cut of the
    precision-recall curve (the largest float below it)."""
    from sklearn.metrics import precision_recall_curve

    y = np.asarray(labels).reshape(-1).astype(np.int8)
    s = np.asarray(scores).reshape(-1)
    if s.dtype.kind != "f":
        s = s.astype(np.float64)
    if y.size != s.size or y.size == 0:
        raise DataError(f"labels and scores must have the same, non-zero length, got {y.size} and {s.size}")
    if y.min() == y.max():
        raise DataError("an F1-optimal threshold needs both good and defective validation samples")
    precision, recall, cuts = precision_recall_curve(y, s)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-300)
    best = int(np.argmax(f1))
    # one step below the cut in the scores' own precision: float32 maps compared with the stored
    # threshold (NumPy casts it to float32) flag exactly the values >= the cut
    cut = s.dtype.type(cuts[best])
    return float(np.nextafter(cut, s.dtype.type(-np.inf))), float(f1[best])


#: values used for the spread of normalised scores (an evenly spaced sample of larger sets)
SPREAD_SAMPLE = 1_000_000


def normal_spread(good_scores: np.ndarray, threshold: float) -> float:
    """The scale of normalised scores: the standard deviation of the good calibration scores (a
    positive fallback of 1e-3 |threshold| when they do not vary)."""
    s = np.asarray(good_scores).reshape(-1)
    if s.size > SPREAD_SAMPLE:  # millions of pixels: an evenly spaced sample gives the same spread
        s = s[:: math.ceil(s.size / SPREAD_SAMPLE)]
    s = s.astype(np.float64)
    spread = float(s.std(ddof=1)) if s.size > 1 else 0.0
    if not spread > 0 or not math.isfinite(spread):
        spread = 1e-3 * max(abs(threshold), 1e-12)
    return spread


@dataclass(frozen=True)
class Calibration:
    """Image (and pixel) thresholds stored in a model file, and what they were learned from.

    ``normalize`` maps a score to ``1 / (1 + exp(-(score - threshold) / scale))``: 0.5 at the
    threshold, monotone, in (0, 1) without clipping (min-max normalisation clips and depends on the
    most extreme calibration score); ``scale`` is the spread of the good calibration scores, so 0.73
    means one such spread above the threshold. The decision is ``score > threshold``, i.e.
    normalised score > 0.5.
    """

    #: ``fpr`` (held-out good training images, :func:`quantile_threshold`) or ``f1`` (a labelled
    #: validation folder, :func:`f1_threshold`)
    method: str
    image_threshold: float
    image_scale: float
    pixel_threshold: float | None = None
    pixel_scale: float | None = None
    #: the target false-positive rate (method ``fpr``)
    target_fpr: float | None = None
    #: image level: the expected and the 95 % upper-bound false-positive rate (method ``fpr``)
    expected_fpr: float | None = None
    fpr_upper_95: float | None = None
    #: F1 on the validation images / pixels (method ``f1``)
    image_f1: float | None = None
    pixel_f1: float | None = None
    n_good: int = 0
    n_defective: int = 0
    #: what the thresholds were learned from, in words
    source: str = ""

    def normalize(self, score: np.ndarray | float) -> np.ndarray:
        return _logistic(score, self.image_threshold, self.image_scale)

    def normalize_map(self, anomaly_map: np.ndarray) -> np.ndarray:
        if self.pixel_threshold is None or self.pixel_scale is None:
            raise DataError("this calibration has no pixel threshold")
        return _logistic(anomaly_map, self.pixel_threshold, self.pixel_scale)

    def decide(self, score: np.ndarray | float) -> np.ndarray:
        """True where defective."""
        return np.asarray(score, dtype=np.float64) > self.image_threshold

    def mask(self, anomaly_map: np.ndarray) -> np.ndarray:
        """Boolean defect mask of a map (False everywhere without a pixel threshold)."""
        if self.pixel_threshold is None:
            return np.zeros(np.shape(anomaly_map), dtype=bool)
        return np.asarray(anomaly_map) > self.pixel_threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> Calibration:
        """Inverse of :meth:`to_dict`; anything else is a :class:`DataError` naming the problem."""
        if not isinstance(raw, dict):
            raise DataError("the calibration is not an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise DataError(f"the calibration has unknown fields: {', '.join(unknown)}")
        try:
            cal = cls(**raw)
        except TypeError as exc:
            raise DataError(f"the calibration is incomplete ({exc})") from None
        numbers: list[Any] = [cal.image_threshold, cal.image_scale]
        if cal.pixel_threshold is not None or cal.pixel_scale is not None:
            numbers += [cal.pixel_threshold, cal.pixel_scale]
        if cal.method not in ("fpr", "f1") or not all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in numbers
        ):
            raise DataError("the calibration holds an unknown method or a non-finite threshold")
        if cal.image_scale <= 0 or (cal.pixel_scale is not None and cal.pixel_scale <= 0):
            raise DataError("the calibration's scales must be positive")
        return cal

    def describe(self) -> str:
        pixel = "" if self.pixel_threshold is None else f", pixel threshold {self.pixel_threshold:.6g}"
        if self.method == "fpr":
            how = "target FPR " + ("?" if self.target_fpr is None else f"{self.target_fpr:g}")
            if self.expected_fpr is not None:
                bound = "" if self.fpr_upper_95 is None else f"; 95 % upper bound {self.fpr_upper_95:.3g}"
                how += f" (expected {self.expected_fpr:.3g}{bound})"
        else:
            how = f"best F1 {self.image_f1:.3f}" if self.image_f1 is not None else "best F1"
        return (
            f"image threshold {self.image_threshold:.6g}{pixel}: {how}, from {self.source or 'unknown data'}"
        )


def _logistic(values: np.ndarray | float, threshold: float, scale: float) -> np.ndarray:
    z = (np.asarray(values, dtype=np.float64) - threshold) / scale
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + exp(-z)) without overflow warnings


def rates_at(good: np.ndarray, defective: np.ndarray, threshold: float) -> dict[str, float | int | None]:
    """Observed false- and true-positive rates of ``score > threshold`` (None where a side is empty)."""
    g = np.asarray(good, dtype=np.float64).reshape(-1)
    d = np.asarray(defective, dtype=np.float64).reshape(-1)
    return {
        "fpr": float((g > threshold).mean()) if g.size else None,
        "tpr": float((d > threshold).mean()) if d.size else None,
        "n_good": int(g.size),
        "n_defective": int(d.size),
    }
