from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stratad.detectors import build_detector, list_detectors
from stratad.detectors.base import Detector
from stratad.detectors.coreset import coreset_count, greedy_coreset
from stratad.errors import DetectorError
from stratad.features import FeatureBatch


def _normal(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, 8, 8, generator=g) * 0.1


def test_separates_obvious_defect_and_localizes() -> None:
    train = FeatureBatch({"n": _normal(10, 0)}, (64, 64))
    test = _normal(4, 1)
    test[2, :, 5, 6] += 3.0
    det = build_detector("patchcore", coreset_size=200).fit(train)
    scores = det.score(FeatureBatch({"n": test}, (64, 64)))
    assert int(np.argmax(scores.image_scores)) == 2
    assert scores.maps is not None and scores.maps.shape == (4, 8, 8)
    assert np.unravel_index(np.argmax(scores.maps[2]), (8, 8)) in {(5, 6), (4, 6), (5, 5), (6, 6), (5, 7)}


def test_save_load_identical_scores(tmp_path: Path) -> None:
    train = FeatureBatch({"a": _normal(6, 0), "b": _normal(6, 2)[:, :, ::2, ::2]}, (64, 64))
    test = FeatureBatch({"a": _normal(3, 3), "b": _normal(3, 4)[:, :, ::2, ::2]}, (64, 64))
    det = build_detector("patchcore", coreset_fraction=0.25, reweight_neighbours=3).fit(train)
    det.save(tmp_path / "d.stratad")
    again = Detector.load(tmp_path / "d.stratad")
    a, b = det.score(test), again.score(test)
    np.testing.assert_array_equal(a.image_scores, b.image_scores)
    assert a.maps is not None and b.maps is not None
    np.testing.assert_array_equal(a.maps, b.maps)


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
