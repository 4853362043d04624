"""AST: the official teacher (FrEIA GLOW couplings conditioned on a positional encoding) and student,
seeded training that leaves the caller's RNGs alone, and the pipeline round trip."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stratad.data import load_dataset
from stratad.detectors import build_detector
from stratad.detectors.ast import ASTConfig, positional_encoding
from stratad.errors import DetectorError
from stratad.features import FeatureBatch
from stratad.pipeline import Pipeline

SMALL = {"epochs": 12, "student_hidden": 32, "student_blocks": 2, "teacher_hidden": 16}


def _features(n: int, seed: int) -> FeatureBatch:
    g = torch.Generator().manual_seed(seed)
    return FeatureBatch({"a": 0.3 * torch.randn(n, 12, 8, 8, generator=g)}, (64, 64))


def test_the_official_settings_and_networks() -> None:
    c = ASTConfig()
    assert (c.coupling_blocks, c.teacher_hidden, c.clamp, c.pos_dim) == (4, 64, 1.9, 32)
    assert (c.student_hidden, c.student_blocks, c.lr, c.batch_size, c.epochs) == (1024, 4, 2e-4, 8, 40)
    det = build_detector("ast", epochs=1, student_hidden=8, student_blocks=1).fit(_features(4, 0))
    assert det.networks_ is not None
    blocks = list(det.networks_.teacher.module_list)
    names = [type(b).__name__ for b in blocks]
    assert names == ["PermuteRandom", "GLOWCouplingBlock"] * 4
    kernels = [b.subnet1.conv1.kernel_size[0] for b in blocks[1::2]]
    assert kernels == [3, 3, 3, 5]
    coupling = blocks[1]
    assert coupling.subnet1.conv1.padding_mode == "replicate"
    assert coupling.subnet1.conv1.in_channels == 6 + 32  # half the channels and the encoding
    # The official clamp: clamp * 0.636 * atan(s / clamp).
    s = torch.tensor([0.5, 4.0])
    expected = 1.9 * 0.636 * torch.atan(s / 1.9)
    torch.testing.assert_close(coupling.clamp * coupling.f_clamp(s), expected)
    # An untrained teacher is the identity up to the permutations (the subnets' gamma starts at 0).
    fresh = build_detector("ast", epochs=1)
    from stratad.detectors.ast import seeded_networks

    networks = seeded_networks((12, 8, 8), fresh.config)
    x = _features(2, 1).features["a"]
    z, log_jac = networks.teach(x)
    assert torch.equal(log_jac, torch.zeros(2))
    torch.testing.assert_close(z.square().sum(), x.square().sum())


def test_positional_encoding_by_hand() -> None:
    p = positional_encoding(8, 3, 5)
    assert p.shape == (8, 3, 5)
    # columns in the first half: sin(w), cos(w), sin(w / 100), cos(w / 100) along the width
    w = torch.arange(5.0)
    torch.testing.assert_close(p[0, 1], torch.sin(w))
    torch.testing.assert_close(p[1, 2], torch.cos(w))
    torch.testing.assert_close(p[2, 0], torch.sin(w * math.exp(-2 * math.log(1e4) / 4)))
    h = torch.arange(3.0)
    torch.testing.assert_close(p[4, :, 3], torch.sin(h))
    torch.testing.assert_close(p[7, :, 0], torch.cos(h * math.exp(-2 * math.log(1e4) / 4)))
    with pytest.raises(DetectorError, match="multiple of 4"):
        build_detector("ast", pos_dim=6)


def test_training_lowers_both_losses_is_seeded_and_leaves_global_rngs_alone() -> None:
    train = _features(16, 0)
    np.random.seed(123)
    torch.manual_seed(123)
    expected_np, expected_torch = np.random.rand(), torch.rand(1)
    np.random.seed(123)
    torch.manual_seed(123)
    a = build_detector("ast", seed=2, **SMALL).fit(train)
    assert np.random.rand() == expected_np and torch.equal(torch.rand(1), expected_torch)
    teacher, student = a.losses_[:12], a.losses_[12:]
    assert len(a.losses_) == 24
    assert np.mean(teacher[-3:]) < np.mean(teacher[:3]) and np.mean(student[-3:]) < np.mean(student[:3])
    b = build_detector("ast", seed=2, **SMALL).fit(train)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_a_pipeline_trains_saves_and_predicts_with_it(tiny_mvtec: Path, tmp_path: Path) -> None:
    split = load_dataset(tiny_mvtec, "mvtec")
    pipe = Pipeline(nodes=["blocks.2", "blocks.3"], image_size=64, detector="ast", detector_params=SMALL)
    pred = pipe.fit(split.train).predict(split.test)
    labels = np.array([r.label for r in split.test])
    assert pred.image_scores[labels == 1].mean() > pred.image_scores[labels == 0].mean()
    pipe.save(tmp_path / "a.stratad")
    again = Pipeline.load(tmp_path / "a.stratad").predict(split.test)
    np.testing.assert_array_equal(again.image_scores, pred.image_scores)
    np.testing.assert_array_equal(again.maps, pred.maps)


def test_bad_inputs_are_one_clear_error() -> None:
    with pytest.raises(DetectorError, match="at least 2 channels"):
        build_detector("ast", epochs=1).fit(FeatureBatch({"a": torch.randn(4, 1, 8, 8)}, (64, 64)))
    det = build_detector("ast", epochs=1, student_hidden=8, student_blocks=1).fit(_features(4, 0))
    with pytest.raises(DetectorError, match="trained on a"):
        det.score(FeatureBatch({"a": torch.randn(2, 12, 4, 4)}, (32, 32)))
    with pytest.raises(DetectorError, match="no spatial map"):
        det.score(FeatureBatch({"a": torch.randn(2, 12)}, (32, 32)))
