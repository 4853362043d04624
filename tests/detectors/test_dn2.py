from __future__ import annotations

import numpy as np
import pytest
import torch

from stratad.detectors import build_detector, list_detectors
from stratad.detectors.dn2 import DN2
from stratad.errors import DetectorError
from stratad.features import FeatureBatch


def _pooled(n: int, seed: int, dim: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g) * 0.2 + 1.0


def test_score_is_the_mean_distance_to_the_k_nearest_training_images() -> None:
    train, test = _pooled(20, 0), _pooled(6, 1)
    dists = torch.cdist(test.double(), train.double())
    for k in (1, 2, 5):
        det = build_detector("dn2", neighbours=k).fit(FeatureBatch({"n": train}, (32, 32)))
        got = det.score(FeatureBatch({"n": test}, (32, 32))).image_scores
        expected = dists.topk(k, dim=1, largest=False).values.mean(1).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4)
    # k larger than the bank: every training image is used
    det = build_detector("dn2", neighbours=50).fit(FeatureBatch({"n": train}, (32, 32)))
    np.testing.assert_allclose(
        det.score(FeatureBatch({"n": test}, (32, 32))).image_scores, dists.mean(1).numpy(), rtol=1e-4
    )


def test_spatial_nodes_are_pooled_and_concatenated() -> None:
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(8, 4, 3, 3, generator=g), torch.randn(8, 6, 1, 1, generator=g)
    det = build_detector("dn2").fit(FeatureBatch({"a": a, "b": b}, (32, 32)))
    assert isinstance(det, DN2) and det.bank_ is not None
    np.testing.assert_allclose(
        det.bank_.numpy(), torch.cat([a.mean((2, 3)), b.flatten(1)], 1).numpy(), rtol=1e-6
    )


def test_options_and_errors() -> None:
    assert "dn2" in list_detectors()
    with pytest.raises(DetectorError, match="neighbours"):
        build_detector("dn2", neighbours=0)
    with pytest.raises(DetectorError, match="not fitted"):
        build_detector("dn2").score(FeatureBatch({"n": _pooled(1, 0)}, (32, 32)))
    det = build_detector("dn2").fit(FeatureBatch({"n": _pooled(3, 0)}, (32, 32)))
    with pytest.raises(DetectorError, match="pooled channels"):
        det.score(FeatureBatch({"n": _pooled(1, 0, dim=8)}, (32, 32)))
    hnsw = build_detector("dn2", index="hnsw").fit(FeatureBatch({"n": _pooled(30, 0)}, (32, 32)))
    assert hnsw.score(FeatureBatch({"n": _pooled(2, 1)}, (32, 32))).image_scores.shape == (2,)
