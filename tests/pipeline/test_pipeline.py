from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stratad.data import load_dataset
from stratad.errors import ModelFileError, NodeError, StratadError
from stratad.evaluation import evaluate_pipeline
from stratad.pipeline import Pipeline


def _pipe(**kw: object) -> Pipeline:
    args: dict = {
        "backbone": "efficientnet_lite0",
        "nodes": ["blocks.2", "blocks.3"],
        "image_size": 64,
        "detector_params": {"coreset_size": 200},
        "batch_size": 4,
    }
    args.update(kw)
    return Pipeline(**args)


def test_fit_predict_save_load_evaluate(tiny_mvtec: Path, tmp_path: Path) -> None:
    split = load_dataset(tiny_mvtec, "mvtec")
    pipe = _pipe().fit(split.train)
    pred = pipe.predict(split.test)
    assert pred.maps is not None and pred.maps.shape == (len(split.test), 64, 64)
    labels = np.array([r.label for r in split.test])
    # Bright 16x16 squares are an obvious defect: every defective image outranks every good one.
    assert pred.image_scores[labels == 1].min() > pred.image_scores[labels == 0].max()
    pipe.save(tmp_path / "m.stratad")
    again = Pipeline.load(tmp_path / "m.stratad")
    pred2 = again.predict(split.test)
    np.testing.assert_array_equal(pred.image_scores, pred2.image_scores)
    np.testing.assert_array_equal(pred.maps, pred2.maps)
    metrics, _ = evaluate_pipeline(again, split.test)
    assert metrics["image_auroc"] == 1.0
    assert metrics["aupro_30"] > 0.8 and metrics["pixel_auroc"] > 0.9
    assert metrics["p_h"] == pytest.approx(2 * metrics["aupro_30"] / (1 + metrics["aupro_30"]))
    assert metrics["backbone"] == "efficientnet_lite0" and len(metrics["nodes"]) == 2


def test_same_seed_same_scores(tiny_mvtec: Path) -> None:
    split = load_dataset(tiny_mvtec, "mvtec")
    a = _pipe(detector_params={"coreset_size": 30}).fit(split.train).predict(split.test[:3])
    b = _pipe(detector_params={"coreset_size": 30}).fit(split.train).predict(split.test[:3])
    np.testing.assert_array_equal(a.image_scores, b.image_scores)


def test_bad_inputs_are_clear(tmp_path: Path, tiny_mvtec: Path) -> None:
    split = load_dataset(tiny_mvtec, "mvtec")
    with pytest.raises(NodeError, match=r"blocks\.99"):
        _pipe(nodes=["blocks.99"]).fit(split.train[:2])
    with pytest.raises(StratadError, match="not fitted"):
        _pipe().predict(split.test)
    (tmp_path / "junk.stratad").write_bytes(b"not a model")
    with pytest.raises(ModelFileError):
        Pipeline.load(tmp_path / "junk.stratad")
    with pytest.raises(ModelFileError, match="not found"):
        Pipeline.load(tmp_path / "missing.stratad")


def test_patch_mode_gde(tiny_mvtec: Path, tmp_path: Path) -> None:
    # 64 px images, 32 px patches at stride 8: a 5 x 5 grid of separately encoded patches.
    split = load_dataset(tiny_mvtec, "mvtec")
    pipe = Pipeline(
        nodes=["blocks.3"], detector="gde", image_size=64, patch_size=32, patch_stride=8, batch_size=4
    )
    pred = pipe.fit(split.train).predict(split.test)
    assert pred.maps is not None and pred.maps.shape == (8, 64, 64)
    labels = np.array([r.label for r in split.test])
    assert pred.image_scores[labels == 1].min() > pred.image_scores[labels == 0].max()
    pipe.save(tmp_path / "gde.stratad")
    again = Pipeline.load(tmp_path / "gde.stratad").predict(split.test)
    np.testing.assert_array_equal(again.maps, pred.maps)
    with pytest.raises(StratadError, match="patch size"):
        Pipeline(image_size=64, patch_size=128)


LITE0 = {
    "patchcore": ["blocks.2.1.add", "blocks.4.2.add"],
    "padim": ["blocks.1.1.add", "blocks.2.1.add", "blocks.3.2.add"],
    "gaussian": [
        "blocks.0.0.bn2",
        "blocks.1.1.add",
        "blocks.2.1.add",
        "blocks.3.2.add",
        "blocks.4.2.add",
        "blocks.5.3.add",
        "blocks.6.0.bn3",
    ],
    "dn2": ["global_pool.flatten"],
    "spade": ["blocks.2.1.add", "blocks.3.2.add", "blocks.4.2.add", "global_pool.flatten"],
    "gde": ["global_pool.flatten"],
}
RESNET18 = {
    "patchcore": ["layer2.1.relu_1", "layer3.1.relu_1"],
    "padim": ["layer1.1.relu_1", "layer2.1.relu_1", "layer3.1.relu_1"],
    "gaussian": ["layer1.1.relu_1", "layer2.1.relu_1", "layer3.1.relu_1", "layer4.1.relu_1"],
    "dn2": ["avgpool"],
    "spade": ["layer1.1.relu_1", "layer2.1.relu_1", "layer3.1.relu_1", "avgpool"],
    "gde": ["avgpool"],
}


@pytest.mark.parametrize("detector", sorted(LITE0))
def test_default_nodes_by_stride(detector: str) -> None:
    """Defaults are stated by stride; on the two reference backbones they are the papers' nodes."""
    for backbone, weights, expected in (
        ("efficientnet_lite0", "imagenet", LITE0),
        ("resnet18", "random", RESNET18),
    ):
        pipe = Pipeline(backbone=backbone, detector=detector, image_size=64, weights=weights).prepare()
        assert pipe.config.nodes == expected[detector], (backbone, detector)


def test_smoothing_is_scipys_gaussian_filter() -> None:
    # The official PatchCore code upsamples with torch and smooths with scipy; the single linear
    # operator used here must agree, including mirror borders wider than the map and non-square maps.
    import torch
    import torch.nn.functional as F
    from scipy.ndimage import gaussian_filter

    from stratad.pipeline import postprocess_maps

    maps = np.random.default_rng(0).random((3, 7, 9)).astype(np.float32) * 5
    for size, sigma in ((64, 4.0), (50, 1.5), (40, 0.7), (12, 4.0), (30, 0.0)):
        up = F.interpolate(torch.from_numpy(maps)[:, None], size=(size, size), mode="bilinear")[:, 0]
        expected = np.stack([gaussian_filter(m, sigma) if sigma else m for m in up.numpy()])
        got = postprocess_maps(maps, size, sigma)
        assert got.dtype == np.float32 and got.shape == (3, size, size)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
