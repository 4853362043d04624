"""The shipped EfficientNet-Lite ImageNet weights, remapped to timm, must classify a cat as a cat."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from skimage import data

from stratad.backbones import BackboneSource, build_backbone
from stratad.backbones.efficientnet_lite import read_lite_imagenet_weights

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_imagenet_weights_recognise_a_tabby_cat(variant: int) -> None:
    backbone = build_backbone(f"efficientnet_lite{variant}")
    assert backbone.source is BackboneSource.timm
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)
    assert backbone.native_size == {0: 224, 1: 240, 2: 260}[variant]
    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    size = backbone.native_size
    image = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        logits = backbone.model((image - mean) / std)
    assert int(logits.argmax()) in IMAGENET_CATS


def test_lite_weights_in_efficientnet_pytorch_naming_load_from_a_user_file(tmp_path: Path) -> None:
    state, _ = read_lite_imagenet_weights(0)
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    from_file = build_backbone("efficientnet_lite0", weights=path)
    shipped = build_backbone("efficientnet_lite0")
    assert torch.equal(from_file.model.conv_head.weight, shipped.model.conv_head.weight)
    assert torch.equal(
        from_file.model.blocks[3][2].conv_pwl.weight, shipped.model.blocks[3][2].conv_pwl.weight
    )
