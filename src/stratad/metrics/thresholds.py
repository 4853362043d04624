"""Thresholds on Mahalanobis distances from a target false-positive rate under a Gaussian model.

Rippel et al. (2020) model normal features as a multivariate Gaussian: the squared Mahalanobis
distance of a normal sample then follows a chi-squared law with ``dim`` degrees of freedom, so a
threshold for a chosen false-positive rate needs no anomalous data and no min-max of normal scores.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import chi2, norm

from stratad.errors import DataError


def chi2_threshold(dim: int, fpr: float) -> float:
    """Mahalanobis distance exceeded by a fraction ``fpr`` of normal samples in ``dim`` dimensions.

    Equals ``sqrt(chi2.ppf(1 - fpr, df=dim))``.
    """
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise DataError(f"dim must be a positive integer (the feature dimension), got {dim!r}.")
    if not 0.0 < fpr < 1.0:
        raise DataError(f"fpr must be strictly between 0 and 1, got {fpr}.")
    # isf(fpr) instead of ppf(1 - fpr): for small rates 1 - fpr rounds away the digits that matter.
    return math.sqrt(float(chi2.isf(fpr, df=int(dim))))


def sigma_to_fpr(k: float) -> float:
    """Two-sided normal tail 2 (1 - Phi(k)): the false-positive rate of a "k sigma" working point.

    In one dimension the Mahalanobis distance is |z|, so ``chi2_threshold(1, sigma_to_fpr(k)) == k``;
    in ``dim`` dimensions the same rate gives the threshold with the familiar 1/2/3-sigma meaning.
    """
    if not math.isfinite(k) or k < 0:
        raise DataError(f"k (the number of standard deviations) must be a finite number >= 0, got {k}.")
    # norm.sf(k) instead of 1 - norm.cdf(k): the subtraction cancels for large k.
    return float(2.0 * norm.sf(k))
