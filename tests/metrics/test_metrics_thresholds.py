"""Gaussian working points: chi-squared thresholds and sigma -> false-positive rate."""

from __future__ import annotations

import math

import pytest

from stratad.errors import DataError
from stratad.metrics import chi2_threshold, harmonic_mean, sigma_to_fpr


def test_chi2_threshold_known_values() -> None:
    # dim=1: the two-sided 95 % normal quantile.
    assert chi2_threshold(1, 0.05) == pytest.approx(1.959963984540054, rel=1e-12)
    # dim=2: chi2(2) is exponential with mean 2, so the threshold is sqrt(-2 ln fpr).
    assert chi2_threshold(2, 0.05) == pytest.approx(math.sqrt(-2 * math.log(0.05)), rel=1e-12)
    assert chi2_threshold(2, 1e-12) == pytest.approx(math.sqrt(-2 * math.log(1e-12)), rel=1e-12)


def test_sigma_to_fpr_known_values() -> None:
    assert sigma_to_fpr(1) == pytest.approx(0.31731050786291415, rel=1e-12)
    assert sigma_to_fpr(2) == pytest.approx(0.04550026389635842, rel=1e-12)
    assert sigma_to_fpr(3) == pytest.approx(0.0026997960632601866, rel=1e-12)
    assert sigma_to_fpr(0) == 1.0


@pytest.mark.parametrize("k", [1.0, 2.0, 3.0, 6.0])
def test_one_dimensional_round_trip(k: float) -> None:
    assert chi2_threshold(1, sigma_to_fpr(k)) == pytest.approx(k, rel=1e-10)


@pytest.mark.parametrize(("dim", "fpr"), [(0, 0.05), (2, 0.0), (2, 1.0), (1.5, 0.05), (True, 0.05)])
def test_chi2_threshold_bad_inputs(dim: int, fpr: float) -> None:
    with pytest.raises(DataError):
        chi2_threshold(dim, fpr)


def test_sigma_to_fpr_bad_input() -> None:
    with pytest.raises(DataError):
        sigma_to_fpr(-1.0)


def test_harmonic_mean() -> None:
    assert harmonic_mean(0.9, 0.6) == pytest.approx(0.72, abs=1e-15)  # 2 * 0.54 / 1.5
    assert harmonic_mean(0.0, 0.8) == 0.0
    assert harmonic_mean(1.0, 1.0) == 1.0
    with pytest.raises(DataError):
        harmonic_mean(float("nan"), 0.5)
