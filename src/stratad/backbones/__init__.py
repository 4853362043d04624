"""Pretrained CNN backbones: a registry of builders, graph nodes (torch.fx), multi-node extraction
in one forward pass, and effective receptive fields per node."""

from __future__ import annotations

# Importing the builder modules registers the built-in backbones.
from stratad.backbones import efficientnet_lite, torchvision_models  # noqa: F401
from stratad.backbones.extractor import NodeExtractor
from stratad.backbones.nodes import NodeInfo, clear_node_cache, list_nodes, resolve_nodes
from stratad.backbones.receptive import (
    effective_receptive_field,
    receptive_field_size,
    relative_receptive_field,
)
from stratad.backbones.registry import (
    Backbone,
    BackboneSource,
    WeightSource,
    build_backbone,
    list_backbones,
    register_backbone,
)

__all__ = [
    "Backbone",
    "BackboneSource",
    "NodeExtractor",
    "NodeInfo",
    "WeightSource",
    "build_backbone",
    "clear_node_cache",
    "effective_receptive_field",
    "list_backbones",
    "list_nodes",
    "receptive_field_size",
    "register_backbone",
    "relative_receptive_field",
    "resolve_nodes",
]
