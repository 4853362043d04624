from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2
from sklearn.covariance import LedoitWolf, ledoit_wolf_shrinkage

from stratad.detectors import build_detector, list_detectors
from stratad.detectors.gaussian import GaussianAD, ledoit_wolf
from stratad.errors import DetectorError
from stratad.features import FeatureBatch

# Standard deviations along the axes of rotated Gaussians. Ledoit-Wolf shrinks towards trace / C * I,
# which inflates variances far below the mean one, so each test uses a spectrum suited to its purpose.
STDS = torch.tensor([2.0, 1.8, 1.5, 1.2, 1.0, 0.8, 0.7, 0.5], dtype=torch.float64)  # well conditioned
THIN = torch.tensor([3.0] * 7 + [0.3], dtype=torch.float64)  # one thin direction
# variances 100, 64, 36, 16, 9, 4, 2, 1 (sum 232): 99% needs the first seven, 1% the last two
SPREAD = torch.tensor([10.0, 8.0, 6.0, 4.0, 3.0, 2.0, 2.0**0.5, 1.0], dtype=torch.float64)


def _rotation(dim: int, seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    return q


def _samples(n: int, seed: int, stds: torch.Tensor = STDS) -> torch.Tensor:
    """Rows of N(0, R diag(stds^2) R^T): a structured covariance, not axis-aligned."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, stds.numel(), generator=g, dtype=torch.float64) * stds
    return z @ _rotation(stds.numel()).T


def _batch(x: torch.Tensor) -> FeatureBatch:
    return FeatureBatch({"pooled": x.float()}, (64, 64))


def _fit(x: torch.Tensor, **params: object) -> GaussianAD:
    det = build_detector("gaussian", **params).fit(_batch(x))
    assert isinstance(det, GaussianAD)
    return det


def test_mahalanobis_separates_an_off_manifold_defect_that_l2_misses() -> None:
    train = _samples(2000, 0, THIN)
    good = _samples(20, 1, THIN)
    # 3.0 along the thin axis (std 0.3): 10 sigma away, but Euclidean-small.
    defect = 3.0 * _rotation(8)[:, -1]
    test = torch.cat([good, defect[None]])
    mvg = _fit(train).score(_batch(test)).image_scores
    assert int(np.argmax(mvg)) == 20
    assert mvg[20] > 1.1 * mvg[:20].max()
    l2 = _fit(train, variant="l2").score(_batch(test)).image_scores
    assert l2[20] < np.median(l2[:20])


def test_spatial_nodes_are_pooled_and_summed_over_nodes() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(30, 6, 4, 4, generator=g)
    b = torch.randn(30, 5, 2, 2, generator=g)
    batch = FeatureBatch({"a": a, "b": b}, (32, 32))
    det = build_detector("gaussian").fit(batch)
    assert isinstance(det, GaussianAD)
    per_node = det.node_scores(batch)
    assert per_node.shape == (2, 30)
    np.testing.assert_allclose(det.score(batch).image_scores, per_node.sum(0), rtol=1e-6)
    single = build_detector("gaussian").fit(FeatureBatch({"a": a.mean(dim=(2, 3))}, (32, 32)))
    np.testing.assert_allclose(
        single.score(FeatureBatch({"a": a}, (32, 32))).image_scores, per_node[0], rtol=1e-6
    )


def test_ledoit_wolf_matches_sklearn_with_more_dimensions_than_samples() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(10, 64, generator=g, dtype=torch.float64) @ torch.randn(
        64, 64, generator=g, dtype=torch.float64
    )
    mean, cov, shrinkage = ledoit_wolf(x, chunk_rows=3)  # chunks must not change the estimate
    reference = LedoitWolf().fit(x.numpy())
    np.testing.assert_allclose(mean.numpy(), reference.location_, rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), reference.covariance_, rtol=1e-9, atol=1e-9)
    assert shrinkage == pytest.approx(ledoit_wolf_shrinkage(x.numpy()), rel=1e-9)
    assert 0.0 < shrinkage <= 1.0
    # float32 rows take the float32 product path: close, not exact
    _, cov32, _ = ledoit_wolf(x.float())
    np.testing.assert_allclose(cov32.numpy(), reference.covariance_, rtol=1e-4, atol=1e-3)
    # ... and the detector works there: 64 dims from 10 images, finite and positive distances
    det = _fit(x)
    assert det.dimension() == 64
    scores = det.score(_batch(x + 5.0)).image_scores
    assert np.all(np.isfinite(scores)) and np.all(scores > 0)
    assert scores.min() > det.score(_batch(x)).image_scores.max()


def test_l2_is_the_euclidean_distance_to_the_mean() -> None:
    train, test = _samples(50, 0), _samples(7, 1)
    expected = torch.linalg.vector_norm(test.float().double() - train.float().double().mean(0), dim=1).numpy()
    got = _fit(train, variant="l2").score(_batch(test)).image_scores
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_sed_matches_hand_computation_and_refuses_constant_dimensions() -> None:
    train, test = _samples(50, 0).float().double(), _samples(7, 1).float().double()
    expected = torch.linalg.vector_norm((test - train.mean(0)) / train.std(0), dim=1).numpy()
    np.testing.assert_allclose(
        _fit(train, variant="sed").score(_batch(test)).image_scores, expected, rtol=1e-6
    )

    constant = train.clone()
    constant[:, [2, 5]] = 1.0
    with pytest.raises(DetectorError, match=r"2 of 8 dimensions .* constant.*variance_epsilon"):
        _fit(constant, variant="sed")
    guarded = _fit(constant, variant="sed", variance_epsilon="1e-6").score(_batch(test)).image_scores
    assert np.all(np.isfinite(guarded))
    with pytest.raises(DetectorError, match="variance_epsilon applies to variant sed"):
        build_detector("gaussian", variance_epsilon=1e-6)


def test_npca_keeps_the_least_variance_directions() -> None:
    train, good = _samples(2000, 0, SPREAD), _samples(200, 1, SPREAD)
    pca, npca = _fit(train, variant="pca"), _fit(train, variant="npca")
    assert pca.variance_kept == 0.99 and npca.variance_kept == 0.01
    assert pca.dimension() == 7 and npca.dimension() == 2
    defect = (8.0 * _rotation(8)[:, -1])[None]  # 8 sigma along the least-variance direction
    test = _batch(torch.cat([good, defect]))
    ratio = {}
    for name, det in (("pca", pca), ("npca", npca)):
        s = det.score(test).image_scores
        ratio[name] = s[-1] / np.median(s[:-1])
    assert ratio["npca"] > 4.0
    assert ratio["pca"] < 1.5
    # a defect along the dominant direction is the opposite case
    big = _batch(torch.cat([good, (60.0 * _rotation(8)[:, 0])[None]]))
    assert pca.score(big).image_scores[-1] > pca.score(big).image_scores[:-1].max()
    assert npca.score(big).image_scores[-1] < npca.score(big).image_scores[:-1].max()
    assert _fit(train, variant="npca", variance_kept="0.9").dimension() > npca.dimension()


def test_chi2_threshold_matches_scipy() -> None:
    det = _fit(_samples(100, 0))
    assert det.dimension() == 8
    for fpr in (0.5, 0.05, 0.0027):
        assert det.threshold(fpr) == pytest.approx(np.sqrt(chi2.ppf(1 - fpr, df=8)), rel=1e-10)
    assert det.threshold(0.05) == pytest.approx(3.9379, abs=1e-4)  # sqrt(15.5073), the chi2(8) table value
    pca = _fit(_samples(100, 0), variant="pca")
    assert pca.threshold(0.05) == pytest.approx(np.sqrt(chi2.ppf(0.95, df=pca.dimension())), rel=1e-10)
    with pytest.raises(DetectorError, match="strictly between 0 and 1"):
        det.threshold(1.5)
    with pytest.raises(DetectorError, match="no chi-square"):
        _fit(_samples(100, 0), variant="l2").threshold(0.05)


def test_observed_fpr_approximates_the_target_on_gaussian_data() -> None:
    det = _fit(_samples(5000, 0))
    good = det.score(_batch(_samples(20000, 1))).image_scores
    assert abs(det.observed_fpr(good, 0.05) - 0.05) < 0.02
    assert abs(det.observed_fpr(good, 0.01) - 0.01) < 0.01


def test_thresholds_are_per_node_when_nodes_are_summed() -> None:
    x = _samples(500, 0).float()
    batch = FeatureBatch({"a": x, "b": x[:, :3]}, (32, 32))
    det = build_detector("gaussian").fit(batch)
    assert isinstance(det, GaussianAD)
    with pytest.raises(DetectorError, match="pass node="):
        det.threshold(0.05)
    assert det.threshold(0.05, node=1) == pytest.approx(np.sqrt(chi2.ppf(0.95, df=3)))
    good = det.node_scores(
        FeatureBatch({"a": _samples(4000, 1).float(), "b": _samples(4000, 1).float()[:, :3]}, (32, 32))
    )
    assert abs(det.observed_fpr(good[1], 0.05, node=1) - 0.05) < 0.02
    with pytest.raises(DetectorError, match="out of range"):
        det.threshold(0.05, node=2)


def test_options_and_errors_are_clear() -> None:
    assert "gaussian" in list_detectors()
    with pytest.raises(DetectorError, match="not one of"):
        build_detector("gaussian", variant="nope")
    with pytest.raises(DetectorError, match="variance_kept applies to variant pca or npca"):
        build_detector("gaussian", variance_kept=0.5)
    with pytest.raises(DetectorError, match="option variance_kept of the gaussian detector must lie"):
        build_detector("gaussian", variant="pca", variance_kept=0.0)
    with pytest.raises(DetectorError, match="at least two"):
        _fit(_samples(1, 0))
    with pytest.raises(DetectorError, match="not fitted"):
        build_detector("gaussian").score(_batch(_samples(2, 0)))
    det = _fit(_samples(20, 0))
    with pytest.raises(DetectorError, match="channels"):
        det.score(_batch(_samples(2, 0)[:, :4]))
    with pytest.raises(DetectorError, match="do not vary"):
        _fit(torch.ones(5, 3, dtype=torch.float64))
