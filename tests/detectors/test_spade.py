from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stratad.detectors import build_detector, list_detectors
from stratad.detectors.spade import Spade, find_node
from stratad.errors import DetectorError
from stratad.features import FeatureBatch


def _two_kinds(n_per_kind: int, seed: int) -> FeatureBatch:
    """Kind A: pixel features near +1, pooled near (1, 0); kind B: near -1 and (0, 1). A first, then B."""
    g = torch.Generator().manual_seed(seed)
    sign = torch.cat([torch.ones(n_per_kind), -torch.ones(n_per_kind)])
    pixels = sign[:, None, None, None] + 0.05 * torch.randn(2 * n_per_kind, 4, 6, 6, generator=g)
    pooled = torch.stack([(sign > 0).float(), (sign < 0).float()], 1) + 0.05 * torch.randn(
        2 * n_per_kind, 2, generator=g
    )
    return FeatureBatch({"a": pixels, "global_pool.flatten": pooled}, (48, 48))


def _normal(n: int, seed: int) -> FeatureBatch:
    g = torch.Generator().manual_seed(seed)
    return FeatureBatch(
        {
            "a": 0.1 * torch.randn(n, 8, 8, 8, generator=g),
            "b": 0.1 * torch.randn(n, 6, 4, 4, generator=g),
            "pool": 0.1 * torch.randn(n, 5, 1, 1, generator=g),
        },
        (64, 64),
    )


def test_pixels_are_compared_with_the_retrieved_images_only() -> None:
    train = _two_kinds(10, 0)
    test = _two_kinds(1, 1).subset([0])  # one kind-A image ...
    test.features["a"][0, :, 2, 4] = -1.0  # ... with one kind-B patch
    only_a = build_detector("spade", image_neighbours=10).fit(train).score(test)
    everyone = build_detector("spade", image_neighbours=20).fit(train).score(test)
    assert only_a.maps is not None and everyone.maps is not None
    assert np.unravel_index(np.argmax(only_a.maps[0]), (6, 6)) == (2, 4)
    assert only_a.maps[0, 2, 4] > 3.5  # |(+1) - (-1)| over 4 channels
    assert everyone.maps[0, 2, 4] < 0.5  # kind-B images were retrieved: the patch has a match


def test_scores_match_brute_force() -> None:
    train, test = _normal(9, 0), _normal(3, 1)
    det = build_detector("spade", image_neighbours=9, pixel_neighbours=2).fit(train)
    scores = det.score(test)
    assert scores.maps is not None

    def node_map(node: str) -> torch.Tensor:
        tr = train.features[node].permute(0, 2, 3, 1).reshape(-1, train.features[node].shape[1])
        te = test.features[node].permute(0, 2, 3, 1)
        n, h, w, c = te.shape
        d = torch.cdist(te.reshape(-1, c).double(), tr.double()).topk(2, dim=1, largest=False).values.mean(1)
        return d.reshape(n, 1, h, w).float()

    expected = node_map("a") + F.interpolate(node_map("b"), size=(8, 8), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(scores.maps, expected[:, 0].numpy(), rtol=1e-4, atol=1e-5)
    pooled_dist = torch.cdist(
        test.features["pool"].flatten(1).double(), train.features["pool"].flatten(1).double()
    )
    np.testing.assert_allclose(scores.image_scores, pooled_dist.mean(1).numpy(), rtol=1e-4)
    by_map = build_detector("spade", image_neighbours=9, pixel_neighbours=2, image_score="map_max").fit(train)
    np.testing.assert_allclose(by_map.score(test).image_scores, scores.maps.reshape(3, -1).max(1), rtol=1e-6)


def test_retrieval_node_selection() -> None:
    assert find_node("global_pool", ["blocks.2.1.add", "global_pool.pool", "global_pool.flatten"]) == 2
    assert find_node("blocks.2.1.add", ["blocks.2.1.add", "global_pool.flatten"]) == 0
    with pytest.raises(DetectorError, match="add it to --nodes"):
        find_node("layer4", ["layer1", "layer2"])
    train = _normal(6, 0)
    # retrieval on pooled node "a" instead of the last node: the bank holds a's channels
    det = build_detector("spade", retrieval_node="a").fit(train)
    assert isinstance(det, Spade) and det.retrieval_bank_ is not None and det.retrieval_bank_.shape == (6, 8)
    # the last node is spatial: it retrieves (pooled) and also gives a map
    spatial_only = build_detector("spade").fit(train.select(["a", "b"]))
    assert isinstance(spatial_only, Spade)
    assert spatial_only.retrieval_bank_ is not None and spatial_only.retrieval_bank_.shape == (6, 6)
    assert spatial_only.pixel_banks_ is not None and len(spatial_only.pixel_banks_) == 2
    with pytest.raises(DetectorError, match="spatial map"):
        build_detector("spade").fit(train.select(["pool"]))


def test_options_and_errors() -> None:
    assert "spade" in list_detectors()
    with pytest.raises(DetectorError, match="not one of"):
        build_detector("spade", combine="mean")
    with pytest.raises(DetectorError, match="image_neighbours"):
        build_detector("spade", image_neighbours=0)
    with pytest.raises(DetectorError, match="not fitted"):
        build_detector("spade").score(_normal(1, 0))
    det = build_detector("spade").fit(_normal(3, 0))
    with pytest.raises(DetectorError, match="nodes"):
        det.score(_normal(2, 1).select(["a", "pool"]))
