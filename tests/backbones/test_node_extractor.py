from __future__ import annotations

import pytest
import torch

from stratad.backbones import Backbone, NodeExtractor


def test_many_nodes_in_one_pass(resnet18: Backbone) -> None:
    extractor = NodeExtractor(resnet18, ["layer3", "layer1", "layer2.0.bn1", "fc"])
    images = torch.rand(2, 3, 64, 64)
    features = extractor(images)
    assert list(features) == extractor.nodes == ["layer1.1.relu_1", "layer2.0.bn1", "layer3.1.relu_1", "fc"]
    shapes = {name: tuple(tensor.shape) for name, tensor in features.items()}
    assert shapes == {
        "layer1.1.relu_1": (2, 64, 16, 16),
        "layer2.0.bn1": (2, 128, 8, 8),
        "layer3.1.relu_1": (2, 256, 4, 4),
        "fc": (2, 1000),
    }
    for tensor in features.values():
        assert tensor.dtype == torch.float32 and tensor.is_contiguous() and tensor.device.type == "cpu"
        assert not tensor.is_inference()  # usable by detectors that train on features
    # a BatchNorm output keeps its negative values: the following in-place ReLU was made out-of-place
    assert (features["layer2.0.bn1"] < 0).any()


def _hooked(backbone: Backbone, module_name: str, images: torch.Tensor) -> torch.Tensor:
    captured: list[torch.Tensor] = []
    module = backbone.model.get_submodule(module_name)
    handle = module.register_forward_hook(lambda _m, _i, output: captured.append(output.clone()))
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    try:
        with torch.inference_mode():
            backbone.model((images - mean) / std)
    finally:
        handle.remove()
    return captured[0]


@pytest.mark.parametrize(("fixture", "module"), [("lite0_random", "blocks.3"), ("resnet18", "layer1.0.bn1")])
def test_extractor_matches_a_forward_hook(fixture: str, module: str, request: pytest.FixtureRequest) -> None:
    backbone: Backbone = request.getfixturevalue(fixture)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    extractor = NodeExtractor(backbone, [module], channels_last=False)
    (node,) = extractor.nodes
    extracted = extractor(images)[node]
    expected = _hooked(backbone, module, images)
    # the same kernels on the same memory layout: bit-identical, not merely close
    assert torch.equal(extracted, expected)


def test_channels_last_gives_the_same_features(lite0_random: Backbone) -> None:
    images = torch.rand(2, 3, 64, 64)
    fast = NodeExtractor(lite0_random, "blocks.4", channels_last=True)(images)
    plain = NodeExtractor(lite0_random, "blocks.4", channels_last=False)(images)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


def test_graph_stops_at_the_deepest_requested_node(resnet18: Backbone) -> None:
    early = NodeExtractor(resnet18, "layer1")
    late = NodeExtractor(resnet18, "layer4")
    early_modules = {node.target for node in early.graph_module.graph.nodes if node.op == "call_module"}
    assert not any(str(target).startswith(("layer2", "layer3", "layer4", "fc")) for target in early_modules)
    assert len(early.graph_module.graph.nodes) < len(late.graph_module.graph.nodes) / 2


def test_bad_images_are_rejected(resnet18: Backbone) -> None:
    extractor = NodeExtractor(resnet18, "layer1")
    with pytest.raises(ValueError, match="B, 3, H, W"):
        extractor(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="255"):
        extractor(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_extractor_exports_with_torch_export(resnet18: Backbone) -> None:
    # torch.export is what the ONNX exporter builds on: the extractor must stay a plain module.
    extractor = NodeExtractor(resnet18, ["layer1", "layer2"])
    images = torch.rand(1, 3, 32, 32)
    exported = torch.export.export(extractor, (images,)).module()
    expected = extractor(images)
    for node, features in exported(images).items():
        torch.testing.assert_close(features, expected[node])


def test_reduce_runs_inside_the_graph_before_in_place_overwrites(resnet18: Backbone) -> None:
    # layer1.0.bn1 is followed by an in-place ReLU: the reduction must see the BatchNorm output.
    class Halve(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.avg_pool2d(x, 2).half()

    nodes = ["layer1.0.bn1", "layer2"]
    images = torch.rand(2, 3, 64, 64)
    plain = NodeExtractor(resnet18, nodes)(images)
    reduced = NodeExtractor(resnet18, nodes, reduce=Halve())(images)
    for node in ("layer1.0.bn1", "layer2.1.relu_1"):
        expected = torch.nn.functional.avg_pool2d(plain[node], 2).half()
        assert reduced[node].dtype == torch.float16 and not reduced[node].is_inference()
        torch.testing.assert_close(reduced[node].float(), expected.float(), rtol=2e-3, atol=2e-3)
    assert (reduced["layer1.0.bn1"] < 0).any()


def test_reduced_identity_nodes_share_their_inputs_snapshot(lite0_random: Backbone) -> None:
    class Half(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.half()

    nodes = ["blocks.1.0.bn2", "blocks.1.0.aa", "blocks.1.0.se", "blocks.1.0.conv_pwl"]
    images = torch.rand(2, 3, 64, 64)
    reduced = NodeExtractor(lite0_random, nodes, reduce=Half())(images)
    plain = NodeExtractor(lite0_random, nodes)(images)
    assert reduced["blocks.1.0.aa"] is reduced["blocks.1.0.bn2"] is reduced["blocks.1.0.se"]
    assert reduced["blocks.1.0.conv_pwl"] is not reduced["blocks.1.0.bn2"]
    for node in nodes:
        torch.testing.assert_close(reduced[node].float(), plain[node], rtol=1e-2, atol=1e-2)
