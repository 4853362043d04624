"""SimpleNet: the official architecture and settings, seeded training, and the pipeline round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stratad.data import load_dataset
from stratad.detectors import build_detector
from stratad.detectors.simplenet import SimpleNetConfig
from stratad.features import FeatureBatch
from stratad.pipeline import Pipeline


def _features(n: int, seed: int) -> FeatureBatch:
    g = torch.Generator().manual_seed(seed)
    return FeatureBatch({"a": 0.1 * torch.randn(n, 6, 8, 8, generator=g)}, (64, 64))


def test_the_official_settings_and_layers() -> None:
    c = SimpleNetConfig()
    assert (c.epochs, c.batch_size, c.margin, c.hidden) == (160, 8, 0.5, 1024)
    assert (c.noise_std, c.noise_scale) == (0.5, "feature")  # stratad's; official 0.015 absolute
    assert (c.adaptor_lr, c.discriminator_lr, c.weight_decay) == (1e-4, 2e-4, 1e-5)
    assert (c.patch_size, c.node_dim, c.target_dim) == (3, 1536, 1536)
    assert c.embedding == "unfold"  # the official MeanMapper / Aggregator patch features
    det = build_detector("simplenet", epochs=1).fit(_features(4, 0))
    assert det.adaptor_ is not None and det.discriminator_ is not None
    assert tuple(det.adaptor_.weight.shape) == (1536, 1536)  # 6 x 3 x 3 values upsampled to 1536
    averaged = build_detector("simplenet", epochs=1, embedding="average").fit(_features(4, 0))
    assert averaged.adaptor_ is not None and tuple(averaged.adaptor_.weight.shape) == (6, 6)
    layers = [type(m).__name__ for m in det.discriminator_.body]
    assert (
        layers == ["Linear", "BatchNorm1d", "LeakyReLU"] and det.discriminator_.body[2].negative_slope == 0.2
    )
    assert det.discriminator_.tail.bias is None and tuple(det.discriminator_.tail.weight.shape) == (1, 1024)


def test_the_noise_follows_the_feature_scale_or_is_absolute() -> None:
    """``noise_scale=feature``: sigma is noise_std times the mean per-dimension std of the training
    patch features, so scaling the features scales the noise; ``absolute`` keeps it fixed."""
    small = {"epochs": 1, "hidden": 8, "embedding": "average"}
    x = _features(4, 0)
    det = build_detector("simplenet", noise_std=0.5, **small).fit(x)
    emb = det.embed(x)
    expected = 0.5 * float(emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1]).std(dim=0).mean())
    assert det.noise_sigma_ == expected
    tenfold = build_detector("simplenet", noise_std=0.5, **small).fit(
        FeatureBatch({"a": 10 * x.features["a"]}, x.image_size)
    )
    assert abs(tenfold.noise_sigma_ / det.noise_sigma_ - 10) < 1e-4
    official = build_detector("simplenet", noise_std=0.015, noise_scale="absolute", **small).fit(x)
    assert official.noise_sigma_ == 0.015


def test_training_lowers_the_loss_and_is_seeded() -> None:
    train = _features(16, 0)
    seen: list[int] = []
    small = {"epochs": 30, "hidden": 32, "node_dim": 64, "target_dim": 64}
    a = build_detector("simplenet", seed=3, **small)
    a.progress = lambda epoch, epochs, loss, seconds: seen.append(epoch)
    a.fit(train)
    assert seen == list(range(1, 31)) and a.losses_[-1] < a.losses_[0]
    b = build_detector("simplenet", seed=3, **small).fit(train)
    c = build_detector("simplenet", seed=4, **small).fit(train)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not torch.equal(a.state_dict()["adaptor.weight"], c.state_dict()["adaptor.weight"])


def test_a_pipeline_trains_saves_and_predicts_with_it(tiny_mvtec: Path, tmp_path: Path) -> None:
    split = load_dataset(tiny_mvtec, "mvtec")
    pipe = Pipeline(
        nodes=["blocks.2", "blocks.3"], image_size=64, detector="simplenet",
        detector_params={"epochs": 40, "hidden": 64, "node_dim": 128, "target_dim": 128},
    )  # fmt: skip
    pred = pipe.fit(split.train).predict(split.test)
    labels = np.array([r.label for r in split.test])
    assert pred.image_scores[labels == 1].mean() > pred.image_scores[labels == 0].mean()
    pipe.save(tmp_path / "s.stratad")
    again = Pipeline.load(tmp_path / "s.stratad").predict(split.test)
    np.testing.assert_array_equal(again.image_scores, pred.image_scores)
    np.testing.assert_array_equal(again.maps, pred.maps)


def test_bad_options_fail_at_once_and_loading_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    import pytest

    from stratad.detectors.base import Detector
    from stratad.errors import DetectorError

    with pytest.raises(DetectorError, match="odd"):
        build_detector("simplenet", patch_size=2)
    with pytest.raises(DetectorError, match="above 0"):
        build_detector("simplenet", node_dim=0)
    small = {"epochs": 2, "hidden": 16, "node_dim": 32, "target_dim": 32}
    det = build_detector("simplenet", **small).fit(_features(20, 0))
    whole = det.score(_features(20, 1))  # scored in chunks of 16 images: the same as one by one
    test = _features(20, 1).features["a"]
    alone = [det.score(FeatureBatch({"a": test[i : i + 1]}, (64, 64))) for i in (0, 19)]
    np.testing.assert_allclose(whole.image_scores[[0, 19]], [a.image_scores[0] for a in alone], rtol=1e-5)
    det.save(tmp_path / "d.stratad")
    torch.manual_seed(7)
    expected = torch.rand(1)
    torch.manual_seed(7)
    Detector.load(tmp_path / "d.stratad")
    assert torch.equal(torch.rand(1), expected)
