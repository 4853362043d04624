"""Backbones publish their stages; detectors pick default nodes by stride, never by backbone name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from stratad.backbones import registry
from stratad.backbones.registry import Backbone, BackboneSource, WeightSource, register_backbone
from stratad.backbones.stages import NodeRule, StageInfo
from stratad.data import load_dataset
from stratad.errors import NodeError
from stratad.pipeline import Pipeline


class TinyNet(nn.Module):
    """Four stages at strides 4, 8, 16, 32 and a pooled output, like a small ResNet."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())

        def stage(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.ReLU())

        self.s1, self.s2, self.s3, self.s4 = stage(8, 16), stage(16, 24), stage(24, 32), stage(32, 48)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.pool(self.s4(self.s3(self.s2(self.s1(self.stem(x))))))


@pytest.fixture
def tiny_backbone() -> Iterator[str]:
    @register_backbone("tiny_stages")
    def tiny(weights: WeightSource) -> Backbone:
        return Backbone(
            name="tiny_stages",
            model=TinyNet().eval(),
            mean=registry.IMAGENET_MEAN,
            std=registry.IMAGENET_STD,
            weights="random",
            source=BackboneSource.torchvision,
            stages=("s1", "s2", "s3", "s4"),
            pooled="pool",
        )

    yield "tiny_stages"
    registry.BACKBONES.unregister("tiny_stages")  # the registration ends with the test


@pytest.mark.parametrize("detector", ["patchcore", "padim", "gaussian", "dn2", "spade", "gde"])
def test_a_new_backbone_with_stage_metadata_only_gets_working_defaults(
    tiny_backbone: str, tiny_mvtec: Path, detector: str
) -> None:
    expected = {
        "patchcore": ["s2.2", "s3.2"],
        "padim": ["s1.2", "s2.2", "s3.2"],
        "gaussian": ["s1.2", "s2.2", "s3.2", "s4.2"],
        "dn2": ["pool"],
        "spade": ["s1.2", "s2.2", "s3.2", "pool"],
        "gde": ["pool"],
    }
    split = load_dataset(tiny_mvtec, "mvtec")
    params = {"coreset_size": 100} if detector == "patchcore" else {}
    pipe = Pipeline(
        backbone=tiny_backbone, detector=detector, image_size=64, weights="random", detector_params=params
    )
    pipe.fit(split.train)
    assert pipe.config.nodes == expected[detector]
    pred = pipe.predict(split.test)
    assert pred.image_scores.shape == (len(split.test),) and np.isfinite(pred.image_scores).all()


def test_rules_refuse_what_a_backbone_does_not_have() -> None:
    stages = [StageInfo("a", "a", 8, 4.0), StageInfo("b", "b", 16, 8.0)]
    assert NodeRule(last_at=(8,)).resolve(stages, None) == ["b"]
    assert NodeRule(first_at=(4, 8)).resolve(stages, None) == ["a", "b"]
    with pytest.raises(NodeError, match="no stage at stride 16"):
        NodeRule(last_at=(16,)).resolve(stages, None, backbone="two_stage")
    with pytest.raises(NodeError, match="no pooled output"):
        NodeRule(pooled=True).resolve(stages, None)
    with pytest.raises(NodeError, match="publishes no stages"):
        NodeRule(every_stage=True).resolve([], None)


def test_registries_refuse_duplicates_suggest_and_filter() -> None:
    from stratad.backbones import list_backbones
    from stratad.detectors import list_detectors
    from stratad.errors import BackboneError, RegistryError
    from stratad.synth import list_defect_kinds

    with pytest.raises(RegistryError, match="registered twice"):
        register_backbone("resnet18")(lambda weights: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(BackboneError, match="did you mean resnet18"):
        registry.build_backbone("resnet81")
    assert list_backbones("efficientnet_lite*") == [f"efficientnet_lite{i}" for i in range(3)]
    assert list_detectors("pa*") == ["padim", "patchcore"]
    assert list_defect_kinds("*paste") == ["cutpaste"]
