from __future__ import annotations

import numpy as np
import pytest
import torch

from stratad.detectors import build_detector, list_detectors
from stratad.detectors.padim import Padim
from stratad.errors import DetectorError
from stratad.features import FeatureBatch


def _normal(n: int, seed: int) -> FeatureBatch:
    """Two nodes at different resolutions; channels correlated through a shared latent."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 4, 8, 8, generator=g)
    mix = torch.randn(12, 4, generator=torch.Generator().manual_seed(99))
    a = torch.einsum("cl,nlhw->nchw", mix, latent) + 0.1 * torch.randn(n, 12, 8, 8, generator=g)
    b = torch.nn.functional.avg_pool2d(latent, 2).repeat(1, 2, 1, 1) + 0.1 * torch.randn(
        n, 8, 4, 4, generator=g
    )
    return FeatureBatch({"a": a, "b": b}, (64, 64))


def _fit(train: FeatureBatch, **params: object) -> Padim:
    det = build_detector("padim", **params).fit(train)
    assert isinstance(det, Padim)
    return det


def test_map_is_the_regularised_mahalanobis_distance_per_position() -> None:
    train, test = _normal(30, 0), _normal(2, 1)
    det = _fit(train, n_features=7, seed=3)
    assert det.channel_index_ is not None and det.channel_index_.numel() == 7
    idx = det.channel_index_.numpy()
    scores = det.score(test)
    assert scores.maps is not None

    def embed(batch: FeatureBatch) -> np.ndarray:  # nearest upsampling of b onto a's 8x8 grid
        b = batch.features["b"].repeat_interleave(2, 2).repeat_interleave(2, 3)
        return torch.cat([batch.features["a"], b], 1).numpy()[:, idx].astype(np.float64)

    tr, te = embed(train), embed(test)
    for y, x in ((0, 0), (3, 5), (7, 2)):
        cov = np.cov(tr[:, :, y, x], rowvar=False) + 0.01 * np.eye(7)
        delta = te[:, :, y, x] - tr[:, :, y, x].mean(0)
        expected = np.sqrt(np.einsum("nd,de,ne->n", delta, np.linalg.inv(cov), delta))
        np.testing.assert_allclose(scores.maps[:, y, x], expected, rtol=1e-4)
    np.testing.assert_array_equal(scores.image_scores, scores.maps.reshape(2, -1).max(1))


def test_random_channel_subset_is_seeded_and_capped() -> None:
    train = _normal(5, 0)
    a, b, c = (
        _fit(train, seed=1, n_features=6),
        _fit(train, seed=1, n_features=6),
        _fit(train, seed=2, n_features=6),
    )
    assert a.channel_index_ is not None and b.channel_index_ is not None and c.channel_index_ is not None
    assert torch.equal(a.channel_index_, b.channel_index_)
    assert not torch.equal(a.channel_index_, c.channel_index_)
    capped = _fit(train)  # default 100 > 20 channels available
    assert capped.channel_index_ is not None
    assert capped.channel_index_.tolist() == list(range(20))
    assert capped.inv_covariance_ is not None and capped.inv_covariance_.shape == (64, 20, 20)
    assert capped.inv_covariance_.dtype == torch.float32


def test_errors_are_clear() -> None:
    assert "padim" in list_detectors()
    with pytest.raises(DetectorError, match="n_features"):
        build_detector("padim", n_features=0)
    with pytest.raises(DetectorError, match="at least two"):
        _fit(_normal(1, 0))
    with pytest.raises(DetectorError, match="not fitted"):
        build_detector("padim").score(_normal(1, 0))
    det = _fit(_normal(4, 0))
    small = _normal(2, 1)
    small = FeatureBatch({k: v[:, :, :4, :4] for k, v in small.features.items()}, (32, 32))
    with pytest.raises(DetectorError, match="same image size"):
        det.score(small)
    with pytest.raises(DetectorError, match="nodes it was fitted on"):
        det.score(_normal(2, 1).select(["a"]))
    with pytest.raises(DetectorError, match="no spatial map"):
        _fit(FeatureBatch({"p": torch.randn(4, 5)}, (32, 32)))
