"""torchvision CNNs. ImageNet weights come from the torch hub cache only; nothing is downloaded.

The hub file is the one of the ``IMAGENET1K_V1`` weights: those are what ``pretrained=True`` gave and
what the anomaly-detection literature (PaDiM, PatchCore, the feature-selection study) used.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torchvision.models as tvm
from torch import nn
from torchvision.models import WeightsEnum

from stratad.backbones.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneSource,
    WeightsKind,
    WeightSource,
    register_backbone,
)
from stratad.backbones.weights import (
    KeyRemap,
    StateDict,
    load_strict,
    read_state_dict,
    require_hub_checkpoint,
)

# The released DenseNet files predate a renaming of the dense layers ("norm.1" -> "norm1"); torchvision
# fixes the keys on load with this same pattern, so a hub-cache file needs it too.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _densenet_keys(state: StateDict) -> StateDict:
    renamed = {}
    for key, value in state.items():
        match = _DENSENET_OLD_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def _torchvision_backbone(
    name: str,
    constructor: Callable[..., nn.Module],
    imagenet: WeightsEnum,
    weights: WeightSource,
    native_size: int = 224,
    remap: KeyRemap | None = None,
    stages: tuple[str, ...] = (),
    pooled: str | None = None,
) -> Backbone:
    model = constructor(weights=None)
    if weights.kind is WeightsKind.random:
        description = "random"
    else:
        if weights.kind is WeightsKind.imagenet:
            path = require_hub_checkpoint(imagenet.url, name)
            description = f"imagenet ({type(imagenet).__name__}.{imagenet.name}, {path})"
        else:
            assert weights.path is not None
            path = weights.path
            description = f"file {path}"
        state = read_state_dict(path)
        note = load_strict(model, remap(state) if remap else state, name, path)
        description += f" ({note})" if note else ""
    return Backbone(
        name=name,
        model=model.eval(),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights=description,
        source=BackboneSource.torchvision,
        native_size=native_size,
        stages=stages,
        pooled=pooled,
    )


_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
_DENSENET_STAGES = tuple(f"features.denseblock{i}" for i in range(1, 5))
# features.0 is the stem, features.8 the 1x1 head convolution after the last stage.
_EFFICIENTNET_STAGES = tuple(f"features.{i}" for i in range(1, 8))


@register_backbone("resnet18")
def resnet18(weights: WeightSource) -> Backbone:
    return _torchvision_backbone(
        "resnet18",
        tvm.resnet18,
        tvm.ResNet18_Weights.IMAGENET1K_V1,
        weights,
        stages=_RESNET_STAGES,
        pooled="avgpool",
    )


@register_backbone("resnet50")
def resnet50(weights: WeightSource) -> Backbone:
    return _torchvision_backbone(
        "resnet50",
        tvm.resnet50,
        tvm.ResNet50_Weights.IMAGENET1K_V1,
        weights,
        stages=_RESNET_STAGES,
        pooled="avgpool",
    )


@register_backbone("wide_resnet50_2")
def wide_resnet50_2(weights: WeightSource) -> Backbone:
    return _torchvision_backbone(
        "wide_resnet50_2",
        tvm.wide_resnet50_2,
        tvm.Wide_ResNet50_2_Weights.IMAGENET1K_V1,
        weights,
        stages=_RESNET_STAGES,
        pooled="avgpool",
    )


@register_backbone("densenet201")
def densenet201(weights: WeightSource) -> Backbone:
    return _torchvision_backbone(
        "densenet201",
        tvm.densenet201,
        tvm.DenseNet201_Weights.IMAGENET1K_V1,
        weights,
        remap=_densenet_keys,
        stages=_DENSENET_STAGES,
        pooled="adaptive_avg_pool2d",
    )


# Native sizes are the centre-crop sizes of torchvision's EfficientNet inference transforms.
@register_backbone("efficientnet_b0")
def efficientnet_b0(weights: WeightSource) -> Backbone:
    return _torchvision_backbone(
        "efficientnet_b0",
        tvm.efficientnet_b0,
        tvm.EfficientNet_B0_Weights.IMAGENET1K_V1,
        weights,
        224,
        stages=_EFFICIENTNET_STAGES,
        pooled="avgpool",
    )


@register_backbone("efficientnet_b1")
def efficientnet_b1(weights: WeightSource) -> Backbone:
    return _torchvision_backbone(
        "efficientnet_b1",
        tvm.efficientnet_b1,
        tvm.EfficientNet_B1_Weights.IMAGENET1K_V1,
        weights,
        240,
        stages=_EFFICIENTNET_STAGES,
        pooled="avgpool",
    )


@register_backbone("efficientnet_b2")
def efficientnet_b2(weights: WeightSource) -> Backbone:
    return _torchvision_backbone(
        "efficientnet_b2",
        tvm.efficientnet_b2,
        tvm.EfficientNet_B2_Weights.IMAGENET1K_V1,
        weights,
        288,
        stages=_EFFICIENTNET_STAGES,
        pooled="avgpool",
    )


@register_backbone("efficientnet_b3")
def efficientnet_b3(weights: WeightSource) -> Backbone:
    return _torchvision_backbone(
        "efficientnet_b3",
        tvm.efficientnet_b3,
        tvm.EfficientNet_B3_Weights.IMAGENET1K_V1,
        weights,
        300,
        stages=_EFFICIENTNET_STAGES,
        pooled="avgpool",
    )


@register_backbone("efficientnet_b4")
def efficientnet_b4(weights: WeightSource) -> Backbone:
    return _torchvision_backbone(
        "efficientnet_b4",
        tvm.efficientnet_b4,
        tvm.EfficientNet_B4_Weights.IMAGENET1K_V1,
        weights,
        380,
        stages=_EFFICIENTNET_STAGES,
        pooled="avgpool",
    )


@register_backbone("efficientnet_b5")
def efficientnet_b5(weights: WeightSource) -> Backbone:
    return _torchvision_backbone(
        "efficientnet_b5",
        tvm.efficientnet_b5,
        tvm.EfficientNet_B5_Weights.IMAGENET1K_V1,
        weights,
        456,
        stages=_EFFICIENTNET_STAGES,
        pooled="avgpool",
    )


@register_backbone("efficientnet_b6")
def efficientnet_b6(weights: WeightSource) -> Backbone:
    return _torchvision_backbone(
        "efficientnet_b6",
        tvm.efficientnet_b6,
        tvm.EfficientNet_B6_Weights.IMAGENET1K_V1,
        weights,
        528,
        stages=_EFFICIENTNET_STAGES,
        pooled="avgpool",
    )


@register_backbone("efficientnet_b7")
def efficientnet_b7(weights: WeightSource) -> Backbone:
    return _torchvision_backbone(
        "efficientnet_b7",
        tvm.efficientnet_b7,
        tvm.EfficientNet_B7_Weights.IMAGENET1K_V1,
        weights,
        600,
        stages=_EFFICIENTNET_STAGES,
        pooled="avgpool",
    )
