"""Pretrained CNN backbones: a registry of builders, graph nodes (torch.fx), multi-node extraction
in one forward pass, and effective receptive fields per node.

The names below are imported on first use, and the built-in builders (timm, torchvision) when the
registry is first consulted: scoring with a saved model that carries its traced extractor
(:mod:`stratad.backbones.traced`) imports neither timm nor torchvision, which saves ~1.3 s per
`stratad predict`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stratad._lazy import lazy_attributes

if TYPE_CHECKING:
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

_WHERE = {
    "NodeExtractor": "extractor",
    "NodeInfo": "nodes",
    "clear_node_cache": "nodes",
    "list_nodes": "nodes",
    "resolve_nodes": "nodes",
    "effective_receptive_field": "receptive",
    "receptive_field_size": "receptive",
    "relative_receptive_field": "receptive",
    "Backbone": "registry",
    "BackboneSource": "registry",
    "WeightSource": "registry",
    "build_backbone": "registry",
    "list_backbones": "registry",
    "register_backbone": "registry",
}
__getattr__ = lazy_attributes(__name__, _WHERE)
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
