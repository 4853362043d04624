from __future__ import annotations

import pytest

from stratad.backbones import Backbone, list_nodes, resolve_nodes
from stratad.errors import NodeError


def test_resnet18_node_listing(resnet18: Backbone) -> None:
    nodes = list_nodes(resnet18, image_size=64)
    by_name = {node.name: node for node in nodes}
    assert len(nodes) > 60
    assert "x" not in by_name  # the input placeholder is not a node
    layer = by_name["layer2.1.relu_1"]
    assert (layer.channels, layer.height, layer.width, layer.stride) == (128, 8, 8, 8.0)
    assert by_name["conv1"].operation == "Conv2d"
    fc = by_name["fc"]
    assert (fc.channels, fc.height, fc.width, fc.stride) == (1000, 0, 0, 0.0)
    assert list_nodes(resnet18, image_size=64) == nodes  # cached, same answer


def test_timm_nodes_use_fx_names_and_leaf_modules(lite0_random: Backbone) -> None:
    nodes = {node.name: node for node in list_nodes(lite0_random, image_size=64)}
    assert len(nodes) > 100
    assert nodes["conv_stem"].operation == "Conv2dSame"  # a timm leaf: plain fx cannot trace it
    assert nodes["blocks.3.2.add"].stride == 16.0


def test_module_names_alias_the_last_node_inside(resnet18: Backbone, lite0_random: Backbone) -> None:
    assert resolve_nodes(resnet18, "layer2") == ["layer2.1.relu_1"]
    assert resolve_nodes(lite0_random, ["blocks.3"]) == ["blocks.3.2.add"]
    # an exact node name that is also a leaf module stays itself
    assert resolve_nodes(resnet18, ["layer1.0.conv1"]) == ["layer1.0.conv1"]


def test_globs_all_and_graph_order(resnet18: Backbone) -> None:
    assert resolve_nodes(resnet18, "layer*.1.relu_1") == [f"layer{i}.1.relu_1" for i in range(1, 5)]
    assert resolve_nodes(resnet18, ["layer3", "layer1", "layer3.1.relu_1"]) == [
        "layer1.1.relu_1",
        "layer3.1.relu_1",
    ]
    assert resolve_nodes(resnet18, "layer4,fc") == ["layer4.1.relu_1", "fc"]
    everything = resolve_nodes(resnet18, "all")
    assert everything == [node.name for node in list_nodes(resnet18)]
    inside = resolve_nodes(resnet18, "layer2.*")
    assert inside[0] == "layer2.0.conv1" and inside[-1] == "layer2.1.relu_1"


def test_unknown_node_suggests_close_names(resnet18: Backbone) -> None:
    with pytest.raises(NodeError, match=r"did you mean .*layer2\.1\.relu_1"):
        resolve_nodes(resnet18, "layer2.1.relu1")
    with pytest.raises(NodeError, match="matches no node"):
        resolve_nodes(resnet18, "blocks.*")
    with pytest.raises(NodeError, match="no node requested"):
        resolve_nodes(resnet18, [])


def test_module_inside_a_leaf_names_the_leaf(lite0_random: Backbone) -> None:
    # timm's BatchNormAct2d is traced as one node, so its activation has no node of its own
    with pytest.raises(NodeError, match=r"inside the node 'bn1'"):
        resolve_nodes(lite0_random, "bn1.act")
