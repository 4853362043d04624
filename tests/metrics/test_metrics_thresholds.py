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


# -- thresholds from data -----------------------------------------------------------------------------
def test_quantile_threshold_is_the_conformal_order_statistic() -> None:
    import numpy as np

    from stratad.metrics.thresholds import quantile_threshold

    scores = np.arange(1.0, 200.0)[::-1]  # 199 scores 1..199, unsorted
    q = quantile_threshold(scores, 0.05)
    assert q.rank == math.ceil(200 * 0.95) == 190 and q.threshold == 190.0 and q.n == 199
    assert q.expected_fpr == pytest.approx(10 / 200) and q.expected_fpr <= 0.05
    assert int((scores > q.threshold).sum()) == 9  # strictly above: the decision rule
    with pytest.raises(DataError, match="at least 99 held-out good images, got 50"):
        quantile_threshold(np.ones(50), 0.01)
    with pytest.raises(DataError, match="strictly between 0 and 1"):
        quantile_threshold(scores, 0.0)
    with pytest.raises(DataError, match="finite"):
        quantile_threshold(np.array([1.0, np.nan]), 0.5)


def test_quantile_threshold_holds_its_rate_and_its_bound_on_new_good_images() -> None:
    import numpy as np

    from stratad.metrics.thresholds import quantile_threshold

    # Exponential good scores: the true false-positive rate of a threshold t is exp(-t).
    rng = np.random.default_rng(0)
    n, fpr, trials = 199, 0.05, 4000
    true_rates, above_bound = [], 0
    for _ in range(trials):
        q = quantile_threshold(rng.exponential(size=n), fpr)
        rate = math.exp(-q.threshold)
        true_rates.append(rate)
        above_bound += rate > q.fpr_upper_95
    assert float(np.mean(true_rates)) == pytest.approx(q.expected_fpr, abs=0.002)  # 0.05 expected
    assert 0.035 < above_bound / trials < 0.065  # the one-sided 95 % bound fails 5 % of the time


def test_f1_threshold_reproduces_the_best_f1_with_the_strict_rule() -> None:
    import numpy as np

    from stratad.metrics.thresholds import f1_threshold

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 1.2, 1.0), 1)  # ties on purpose
    t, best = f1_threshold(labels, scores)

    def f1(flagged: np.ndarray) -> float:
        tp = int((flagged & (labels == 1)).sum())
        return 2 * tp / (int(flagged.sum()) + int(labels.sum()))

    assert f1(scores > t) == pytest.approx(best, abs=1e-12)
    assert best == pytest.approx(max(f1(scores >= c) for c in np.unique(scores)), abs=1e-12)
    with pytest.raises(DataError, match="both good and defective"):
        f1_threshold(np.zeros(4), np.arange(4.0))


def test_calibration_normalises_to_one_half_at_the_threshold_and_round_trips() -> None:
    import numpy as np

    from stratad.metrics.thresholds import Calibration

    cal = Calibration(
        method="fpr", image_threshold=2.0, image_scale=0.5, pixel_threshold=1.0, pixel_scale=0.1
    )
    assert float(cal.normalize(2.0)) == 0.5 and float(cal.normalize(2.5)) == pytest.approx(
        1 / (1 + math.e**-1)
    )
    values = cal.normalize(np.array([-1e9, 0.0, 1.9, 2.1, 1e9]))
    assert np.all(np.isfinite(values)) and values[0] >= 0 and values[-1] <= 1  # no overflow
    assert np.all(np.diff(values) >= 0) and values[1] < values[2] < 0.5 < values[3]  # monotone
    assert list(cal.decide(np.array([1.999, 2.0, 2.001]))) == [False, False, True]
    assert cal.mask(np.array([[0.5, 1.5]])).tolist() == [[False, True]]
    assert Calibration.from_dict(cal.to_dict()) == cal
    for bad in (
        {**cal.to_dict(), "image_threshold": float("nan")},
        {**cal.to_dict(), "method": "magic"},
        {**cal.to_dict(), "surprise": 1},
        {**cal.to_dict(), "image_scale": 0.0},
        [1, 2],
    ):
        with pytest.raises(DataError):
            Calibration.from_dict(bad)
