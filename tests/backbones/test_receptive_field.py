from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from stratad.backbones import Backbone, receptive_field_size, relative_receptive_field


def test_window_size_on_hand_made_maps() -> None:
    delta = torch.zeros(9, 9)
    delta[4, 4] = 1.0
    assert receptive_field_size(delta) == 1.0
    block = torch.zeros(16, 16)
    block[5:10, 3:8] = 1.0  # a 5x5 square off the image centre: the window follows its centre of mass
    assert receptive_field_size(block, mass_fraction=1.0) == 5.0
    assert receptive_field_size(block, mass_fraction=0.3) == 3.0  # 9 of 25 pixels >= 30 %
    even = torch.zeros(8, 8)
    even[3:5, 3:5] = 1.0  # centre of mass between pixels: a 2-pixel window
    assert receptive_field_size(even, mass_fraction=1.0) == 2.0
    assert math.isnan(receptive_field_size(torch.zeros(4, 4)))


def test_relative_receptive_field_grows_with_depth(resnet18: Backbone) -> None:
    rf = relative_receptive_field(resnet18, ["layer3", "conv1", "layer1"], image_size=64, n_samples=2)
    assert list(rf) == ["conv1", "layer1.1.relu_1", "layer3.1.relu_1"]
    assert all(0.0 < value <= 1.0 for value in rf.values())
    # the 7x7 stem convolution: the gradient is the kernel itself, 7 pixels wide
    assert rf["conv1"] == 7 / 64
    assert rf["conv1"] < rf["layer1.1.relu_1"] < rf["layer3.1.relu_1"]
    again = relative_receptive_field(resnet18, ["layer1"], image_size=64, n_samples=2)
    assert again["layer1.1.relu_1"] == rf["layer1.1.relu_1"]  # seeded


def test_receptive_field_cache(resnet18: Backbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stratad.backbones import receptive

    def rf(nodes: list[str], n_samples: int = 1) -> dict[str, float]:
        return relative_receptive_field(
            resnet18, nodes, image_size=64, n_samples=n_samples, cache_dir=tmp_path
        )

    first = rf(["layer1", "conv1"])
    (cached,) = tmp_path.glob("resnet18-64px-*.json")

    def no_gradients(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(receptive, "effective_receptive_field", no_gradients)
    assert rf(["conv1"]) == {"conv1": first["conv1"]}
    monkeypatch.undo()
    # other settings or other weights are other entries, never a stale answer
    rf(["conv1"], n_samples=2)
    with torch.no_grad():
        resnet18.model.conv1.weight.mul_(2.0)
    try:
        rf(["conv1"])
    finally:
        with torch.no_grad():
            resnet18.model.conv1.weight.div_(2.0)
    assert len(list(tmp_path.glob("resnet18-64px-*.json"))) == 3
    cached.write_text("not json")  # a damaged file is recomputed, not trusted
    assert rf(["layer1", "conv1"]) == first
