from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf

from stratad.detectors import build_detector, list_detectors
from stratad.detectors.gde import GaussianDensity
from stratad.errors import DataError, DetectorError
from stratad.features import FeatureBatch
from stratad.features.patches import extract_patch_features, patch_grid, patch_scores_to_image


def _dense(n: int, seed: int, size: int = 8) -> FeatureBatch:
    """Channels 4..7 follow channels 0..3 (a correlated, rank-deficient-ish structure) plus noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 4, size, size, generator=g)
    x = torch.cat([base, base + 0.05 * torch.randn(n, 4, size, size, generator=g)], 1)
    return FeatureBatch({"n": x}, (64, 64))


def _fit(train: FeatureBatch, **params: object) -> GaussianDensity:
    det = build_detector("gde", **params).fit(train)
    assert isinstance(det, GaussianDensity)
    return det


def test_one_gaussian_over_all_positions_matches_sklearn() -> None:
    train, test = _dense(6, 0), _dense(2, 1)
    det = _fit(train, chunk_rows=100)  # chunks of whole images must not change the estimate
    rows = train.features["n"].permute(0, 2, 3, 1).reshape(-1, 8).double().numpy()
    lw = LedoitWolf().fit(rows)
    q = test.features["n"].permute(0, 2, 3, 1).reshape(-1, 8).double().numpy() - lw.location_
    expected = np.sqrt(np.einsum("nd,de,ne->n", q, lw.precision_, q)).reshape(2, 8, 8)
    scores = det.score(test)
    assert scores.maps is not None
    np.testing.assert_allclose(scores.maps, expected, rtol=2e-4)
    np.testing.assert_array_equal(scores.image_scores, scores.maps.reshape(2, -1).max(1))
    assert det.dimension() == 8


def test_nodes_are_resized_and_concatenated() -> None:
    g = torch.Generator().manual_seed(0)
    batch = FeatureBatch(
        {
            "a": torch.randn(5, 3, 8, 8, generator=g),
            "b": torch.randn(5, 2, 4, 4, generator=g),
            "p": torch.randn(5, 4, generator=g),
        },
        (64, 64),
    )
    det = _fit(batch)
    assert det.mean_ is not None and det.mean_.shape == (9,)
    scores = det.score(batch)
    assert scores.maps is not None and scores.maps.shape == (5, 8, 8)


def test_more_dimensions_than_samples() -> None:
    g = torch.Generator().manual_seed(0)
    train = FeatureBatch({"n": torch.randn(10, 64, 1, 1, generator=g)}, (32, 32))
    det = _fit(train)
    scores = det.score(FeatureBatch({"n": torch.randn(3, 64, 1, 1, generator=g)}, (32, 32)))
    assert np.all(np.isfinite(scores.image_scores)) and det.dimension() == 64


def _avg_pool_fn(patches: torch.Tensor) -> dict[str, torch.Tensor]:
    """A tiny 'network': a 4x4 average-pool map and a pooled per-channel maximum."""
    return {"avg": F.avg_pool2d(patches, 4), "max": patches.amax(dim=(2, 3))}


def test_extract_patch_features_gives_a_57x57_grid_at_the_right_positions() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 256, 256, generator=g)
    done: list[int] = []
    feats = extract_patch_features(
        _avg_pool_fn, images, patch_size=32, stride=4, batch_size=1000, progress=done.append
    )
    assert patch_grid(256, 256, 32, 4) == (57, 57)
    assert feats["avg"].shape == (2, 3, 57, 57) and feats["max"].shape == (2, 3, 57, 57)
    assert sum(done) == 2 * 57 * 57
    # patch (i, j) covers [4i, 4i + 32) x [4j, 4j + 32): its pooled average is a strided 32x32 average
    np.testing.assert_allclose(
        feats["avg"].numpy(), F.avg_pool2d(images, 32, stride=4).numpy(), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(feats["max"].numpy(), F.max_pool2d(images, 32, stride=4).numpy())
    b, i, j = 1, 13, 50
    np.testing.assert_allclose(
        feats["max"][b, :, i, j].numpy(),
        images[b, :, 4 * i : 4 * i + 32, 4 * j : 4 * j + 32].amax(dim=(1, 2)).numpy(),
    )


def test_extract_patch_features_resizes_patches_when_asked() -> None:
    seen: list[tuple[int, ...]] = []

    def fn(patches: torch.Tensor) -> dict[str, torch.Tensor]:
        seen.append(tuple(patches.shape))
        return {"mean": patches.mean(dim=(2, 3))}

    feats = extract_patch_features(
        fn, torch.rand(1, 3, 40, 48), patch_size=16, stride=8, batch_size=7, input_size=64
    )
    assert feats["mean"].shape == (1, 3, 4, 5)
    assert all(s[1:] == (3, 64, 64) for s in seen) and sum(s[0] for s in seen) == 20
    with pytest.raises(DataError, match="smaller than"):
        extract_patch_features(fn, torch.rand(1, 3, 8, 8), patch_size=16)


def test_patch_scores_spread_back_onto_the_image() -> None:
    flat = patch_scores_to_image(torch.full((1, 57, 57), 2.5))
    assert flat.shape == (1, 256, 256)
    np.testing.assert_allclose(flat.numpy(), 2.5, rtol=1e-5)
    spike = torch.zeros(1, 57, 57)
    spike[0, 10, 40] = 1.0
    up = patch_scores_to_image(spike)
    y, x = np.unravel_index(int(up[0].argmax()), (256, 256))
    assert (abs(y - (40 + 15.5)) <= 2) and (abs(x - (160 + 15.5)) <= 2)  # the patch's centre
    assert (
        float(up[0, :30].max()) < 1e-3 and float(up[0, :, :150].max()) < 1e-3
    )  # nothing outside its footprint
    assert patch_scores_to_image(spike, image_size=(260, 258)).shape == (1, 260, 258)


def test_gde_on_patch_features_finds_a_defect() -> None:
    g = torch.Generator().manual_seed(0)
    train = torch.rand(6, 3, 64, 64, generator=g) * 0.2 + 0.4
    test = torch.rand(2, 3, 64, 64, generator=g) * 0.2 + 0.4
    test[1, :, 40:52, 8:20] = 1.0

    def fn(p: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"stats": torch.cat([p.mean(dim=(2, 3)), p.std(dim=(2, 3))], 1)}

    def grid(images: torch.Tensor) -> FeatureBatch:
        return FeatureBatch(extract_patch_features(fn, images, patch_size=16, stride=4), (64, 64))

    scores = _fit(grid(train)).score(grid(test))
    assert scores.maps is not None and scores.maps.shape == (2, 13, 13)
    assert int(np.argmax(scores.image_scores)) == 1
    y, x = np.unravel_index(int(scores.maps[1].argmax()), (13, 13))
    assert 40 - 16 < 4 * y < 52 and 8 - 16 < 4 * x < 20  # the patch overlaps the defect


def test_options_and_errors() -> None:
    assert "gde" in list_detectors()
    with pytest.raises(DetectorError, match="chunk_rows"):
        build_detector("gde", chunk_rows=0)
    with pytest.raises(DetectorError, match="not fitted"):
        build_detector("gde").score(_dense(1, 0))
    det = _fit(_dense(3, 0))
    with pytest.raises(DetectorError, match="channels"):
        det.score(FeatureBatch({"n": torch.zeros(1, 3, 8, 8)}, (64, 64)))
