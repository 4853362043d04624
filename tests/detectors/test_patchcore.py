from __future__ import annotations

import pytest
import torch

from stratad.detectors import build_detector, list_detectors
from stratad.detectors.coreset import coreset_count, greedy_coreset
from stratad.errors import DetectorError
from stratad.features import FeatureBatch


def _normal(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, 8, 8, generator=g) * 0.1


def test_coreset_is_k_center_and_seeded() -> None:
    # Four tight clusters: a 4-point greedy k-center must pick one point of each.
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    pts = (centres[:, None, :] + 0.01 * torch.randn(4, 25, 2)).reshape(-1, 2)
    idx = greedy_coreset(pts, 4, projection_dim=0, seed=1)
    assert sorted((idx // 25).tolist()) == [0, 1, 2, 3]
    assert torch.equal(greedy_coreset(pts, 10, 0, seed=5), greedy_coreset(pts, 10, 0, seed=5))
    assert coreset_count(1000, 1000, 0.1) == 100
    assert coreset_count(50, 1000, None) == 50


def test_coreset_numpy_and_torch_loops_pick_the_same_points() -> None:
    # The CPU runs the NumPy loop; a GPU bank runs the torch one: both must pick the same rows.
    from stratad.detectors.coreset import _farthest_points_numpy, _farthest_points_torch

    g = torch.Generator().manual_seed(0)
    bank = torch.randn(3000, 16, generator=g) * torch.linspace(0.1, 3.0, 16)
    expected = _farthest_points_torch(bank, 200, 7)
    got = torch.from_numpy(_farthest_points_numpy(bank.numpy(), 200, 7))
    assert torch.equal(got, expected)
    assert len(set(got.tolist())) == 200


def test_bad_options_are_clear() -> None:
    assert "patchcore" in list_detectors()
    with pytest.raises(DetectorError, match="unknown detector"):
        build_detector("nope")
    with pytest.raises(DetectorError, match="unknown option"):
        build_detector("patchcore", coreset=3)
    with pytest.raises(DetectorError, match="not a valid int"):
        build_detector("patchcore", coreset_size="many")
    with pytest.raises(DetectorError, match="coreset_fraction"):
        build_detector("patchcore", coreset_fraction="1.5")
    with pytest.raises(DetectorError, match="not fitted"):
        build_detector("patchcore").score(FeatureBatch({"n": _normal(1, 0)}, (64, 64)))
