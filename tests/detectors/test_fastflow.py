"""FastFlow: the paper's flow on FrEIA, seeded training that leaves the caller's RNGs alone, and the
pipeline round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stratad.data import load_dataset
from stratad.detectors import build_detector
from stratad.detectors.fastflow import FastFlowConfig
from stratad.features import FeatureBatch
from stratad.pipeline import Pipeline


def _features(n: int, seed: int) -> FeatureBatch:
    g = torch.Generator().manual_seed(seed)
    return FeatureBatch({"a": 0.1 * torch.randn(n, 4, 8, 8, generator=g)}, (64, 64))


def test_the_paper_settings_and_the_alternating_subnets() -> None:
    c = FastFlowConfig()
    assert (c.flow_steps, c.hidden_ratio, c.conv3x3_only, c.steps, c.lr) == (8, 1.0, False, 200, 1e-3)
    det = build_detector("fastflow", steps=2).fit(_features(4, 0))
    assert det.flows_ is not None
    blocks = list(det.flows_[0].flow.module_list)
    assert len(blocks) == 8 and all(type(b).__name__ == "AllInOneBlock" for b in blocks)
    kernels = [b.subnet[0].kernel_size[0] for b in blocks]
    assert kernels == [3, 1, 3, 1, 3, 1, 3, 1]


def test_training_lowers_the_loss_is_seeded_and_leaves_global_rngs_alone() -> None:
    train = _features(16, 0)
    np.random.seed(123)
    torch.manual_seed(123)
    expected_np, expected_torch = np.random.rand(), torch.rand(1)
    np.random.seed(123)
    torch.manual_seed(123)
    a = build_detector("fastflow", steps=40, flow_steps=4, batch_size=8, seed=2).fit(train)
    assert np.random.rand() == expected_np and torch.equal(torch.rand(1), expected_torch)
    assert np.mean(a.losses_[-5:]) < np.mean(a.losses_[:5])
    b = build_detector("fastflow", steps=40, flow_steps=4, batch_size=8, seed=2).fit(train)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_a_pipeline_trains_saves_and_predicts_with_it(tiny_mvtec: Path, tmp_path: Path) -> None:
    split = load_dataset(tiny_mvtec, "mvtec")
    pipe = Pipeline(
        nodes=["blocks.1", "blocks.2"], image_size=64, detector="fastflow",
        detector_params={"steps": 60, "flow_steps": 4, "batch_size": 8},
    )  # fmt: skip
    pred = pipe.fit(split.train).predict(split.test)
    labels = np.array([r.label for r in split.test])
    assert pred.image_scores[labels == 1].mean() > pred.image_scores[labels == 0].mean()
    pipe.save(tmp_path / "f.stratad")
    again = Pipeline.load(tmp_path / "f.stratad").predict(split.test)
    np.testing.assert_array_equal(again.image_scores, pred.image_scores)
    np.testing.assert_array_equal(again.maps, pred.maps)


def test_a_one_channel_node_is_one_clear_error() -> None:
    import pytest

    from stratad.errors import DetectorError

    thin = FeatureBatch({"a": torch.randn(4, 1, 8, 8)}, (64, 64))
    with pytest.raises(DetectorError, match="at least 2 channels"):
        build_detector("fastflow", steps=1).fit(thin)
