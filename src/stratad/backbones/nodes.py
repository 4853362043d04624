"""Graph nodes of a backbone: their torch.fx names, output shapes, and how user requests resolve to them.

User-visible layer names are the torch.fx node names printed by torchvision's feature-extraction
package (``layer2.3.relu_2``, ``features.4.1.add``, ``blocks.3.2.add``), taken from the *eval*-mode
graph. timm models are traced with timm's registry of untraceable leaf modules and functions
(``Conv2dSame``, ``BatchNormAct2d``, padding helpers...), exactly as ``timm.layers.create_feature_extractor``
does, so those appear as single nodes.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from stratad.backbones.registry import Backbone, BackboneSource
from stratad.errors import NodeError

DEFAULT_IMAGE_SIZE = 256
ALL_NODES = "all"
_GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class NodeInfo:
    """One graph node and the shape of its output for a square input of ``image_size``.

    Spatial (4-D) outputs give ``channels, height, width`` and ``stride = image_size / width``;
    non-spatial outputs (``flatten``, the classifier) have ``height = width = 0`` and ``stride = 0``.
    ``operation`` names what the node computes: a module class (``Conv2d``) or a function (``add``).
    """

    name: str
    channels: int
    height: int
    width: int
    stride: float
    operation: str


# The listing depends only on the architecture and the input size, but costs one trace of the model
# (over a second for DenseNet-201) plus a forward pass, and every command that names nodes needs it.
_NODE_CACHE: dict[tuple[str, str, int], tuple[NodeInfo, ...]] = {}
_GRAPH_NAME_CACHE: dict[tuple[str, str], tuple[str, ...]] = {}


def clear_node_cache() -> None:
    _NODE_CACHE.clear()
    _GRAPH_NAME_CACHE.clear()


def _architecture_key(backbone: Backbone) -> tuple[str, str]:
    return backbone.name, type(backbone.model).__qualname__


def _tracer_kwargs(backbone: Backbone) -> dict[str, Any] | None:
    if backbone.source is BackboneSource.timm:
        # The same registries timm.layers.create_feature_extractor passes to torchvision's tracer.
        from timm.layers import get_notrace_functions, get_notrace_modules

        return {"leaf_modules": get_notrace_modules(), "autowrap_functions": get_notrace_functions()}
    return None


def graph_node_names(backbone: Backbone) -> list[str]:
    """Every node of the eval-mode graph in execution order, the input placeholder first."""
    key = _architecture_key(backbone)
    if key not in _GRAPH_NAME_CACHE:
        from torchvision.models.feature_extraction import get_graph_node_names

        was_training = backbone.model.training
        _, eval_names = get_graph_node_names(
            backbone.model, tracer_kwargs=_tracer_kwargs(backbone), suppress_diff_warning=True
        )
        backbone.model.train(was_training)
        _GRAPH_NAME_CACHE[key] = tuple(eval_names)
    return list(_GRAPH_NAME_CACHE[key])


def build_graph_module(
    backbone: Backbone, nodes: Sequence[str], reduce: nn.Module | None = None
) -> fx.GraphModule:
    """An eval-mode fx module returning ``{node: output}`` for exact node names.

    ``create_feature_extractor`` ends with dead-code elimination, so nothing after the deepest
    requested node is computed. Returned nodes are snapshotted before later in-place operations
    can overwrite them (:func:`protect_outputs`), by ``reduce`` when given (see there). The module
    shares its submodules with ``backbone.model`` (no copy of the weights).
    """
    if not nodes:
        raise NodeError(
            f"no node requested for {backbone.name}; run `stratad nodes {backbone.name}` to list them."
        )
    from torchvision.models.feature_extraction import create_feature_extractor

    was_training = backbone.model.training
    backbone.model.eval()
    # The train graph is never run (extraction is always in eval mode) but torchvision traces it
    # anyway; returning only the input there keeps that trace valid even where the graphs differ.
    input_name = graph_node_names(backbone)[0]
    module = create_feature_extractor(
        backbone.model,
        train_return_nodes=[input_name],
        eval_return_nodes=list(nodes),
        tracer_kwargs=_tracer_kwargs(backbone),
        suppress_diff_warning=True,
    )
    backbone.model.train(was_training)
    module.eval()
    protect_outputs(module, reduce)
    return module


_PROTECTED = "stratad_snapshot_of"
_REDUCE = "stratad_reduce"


def protect_outputs(module: fx.GraphModule, reduce: nn.Module | None = None) -> None:
    """Snapshot every returned node right after it runs, before later nodes can overwrite it.

    Models mutate tensors in place (``ReLU(inplace=True)`` after a BatchNorm in ResNet and DenseNet,
    ``F.relu(..., inplace=True)``, in-place activations that leaf modules apply): the tensor returned
    for the BatchNorm node would silently hold the ReLU's output, and gradients taken from it would
    be wrong. A ``clone`` costs one copy per returned node, far less than making the model's
    operations out-of-place (measured 5 % slower for ResNet-50 and 30 % for EfficientNet-Lite0 on
    the CPU), and needs no list of in-place operations.

    With ``reduce`` (a module mapping a tensor to a NEW, typically smaller tensor, such as pooled
    float16 maps), the snapshot is ``reduce(output)`` instead of a copy, for every returned node: the
    full-size output is then freed as soon as the graph no longer needs it, which keeps a pass that
    returns hundreds of nodes fast and small. An ``nn.Identity`` node that runs right after its input
    (timm's ``aa``, ``se`` and ``drop_path`` placeholders) returns that very tensor, unchanged, so it
    shares its input's snapshot: the same object comes back under both names (30 % of the cached
    bytes of a full EfficientNet-Lite0 sweep).
    """
    if reduce is not None:
        module.add_submodule(_REDUCE, reduce)
    graphs = {
        id(graph): graph
        for graph in (module.graph, getattr(module, "train_graph", None), getattr(module, "eval_graph", None))
        if graph is not None
    }
    for graph in graphs.values():
        order = list(graph.nodes)
        output = order[-1]
        position = {node: index for index, node in enumerate(order)}
        returned = dict(output.args[0])  # type: ignore[call-overload]
        snapshots: dict[fx.Node, fx.Node] = {}
        for key, node in sorted(returned.items(), key=lambda item: position[item[1]]):
            # Checking the node's own users is not enough: an alias of it (an Identity node's
            # output is the same tensor) may be overwritten later. Only the last node is safe.
            if reduce is None and (node.op == "placeholder" or node is order[-2]):
                continue
            source = _passed_through(module, node, order, position) if reduce is not None else None
            if source is not None and source in snapshots:
                snapshot = snapshots[source]
            else:
                with graph.inserting_after(node):
                    if reduce is None:
                        snapshot = graph.call_method("clone", (node,))
                    else:
                        snapshot = graph.call_module(_REDUCE, (node,))
                snapshot.meta[_PROTECTED] = node
            snapshots[node] = snapshot
            returned[key] = snapshot
        output.args = (returned,)
    module.recompile()


def _passed_through(
    module: fx.GraphModule, node: fx.Node, order: list[fx.Node], position: dict[fx.Node, int]
) -> fx.Node | None:
    """The input an ``nn.Identity`` node returns untouched, when nothing ran in between."""
    if node.op != "call_module" or not isinstance(module.get_submodule(str(node.target)), nn.Identity):
        return None
    if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
        return None
    source = node.args[0]
    return source if position[node] == position[source] + 1 else None


def _operation(module: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return type(module.get_submodule(str(node.target))).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


def _output_nodes(module: fx.GraphModule) -> dict[str, fx.Node]:
    output = next(node for node in module.graph.nodes if node.op == "output")
    returned = dict(output.args[0])  # type: ignore[call-overload]
    return {name: node.meta.get(_PROTECTED, node) for name, node in returned.items()}


def list_nodes(backbone: Backbone, image_size: int = DEFAULT_IMAGE_SIZE) -> list[NodeInfo]:
    """Every graph node with its output shape, in execution order, from ONE eval-mode forward pass.

    The input placeholder is skipped, and so are nodes whose output is not a tensor (a shape, a
    list); none of the registered backbones has such nodes. The classifier head (global pooling,
    flatten, fc) is included. Cached per (backbone name, architecture class, image size).
    """
    key = (*_architecture_key(backbone), int(image_size))
    if key not in _NODE_CACHE:
        _NODE_CACHE[key] = tuple(_compute_nodes(backbone, int(image_size)))
    return list(_NODE_CACHE[key])


def _compute_nodes(backbone: Backbone, image_size: int) -> list[NodeInfo]:
    names = graph_node_names(backbone)
    module = build_graph_module(backbone, names)
    by_name = _output_nodes(module)
    parameter = next(iter(backbone.model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    # Zeros are enough: only shapes are read.
    dummy = torch.zeros(1, 3, image_size, image_size, device=device, dtype=dtype)
    with torch.inference_mode():
        outputs = module(dummy)
    infos = []
    for name in names:
        node, value = by_name.get(name), outputs.get(name)
        if node is None or node.op == "placeholder" or not isinstance(value, torch.Tensor):
            continue
        shape = tuple(value.shape)
        channels = int(shape[1]) if len(shape) >= 2 else 0
        if len(shape) == 4 and shape[3] > 0:
            height, width, stride = int(shape[2]), int(shape[3]), image_size / int(shape[3])
        else:
            height, width, stride = 0, 0, 0.0
        infos.append(NodeInfo(name, channels, height, width, stride, _operation(module, node)))
    return infos


def resolve_nodes(backbone: Backbone, requested: str | Sequence[str]) -> list[str]:
    """Exact node names, in graph order and without duplicates, for what a user asked for.

    Each request is one of: a node name (``layer2.1.relu_1``); ``all``; an fnmatch pattern over node
    names (``blocks.*``, where ``*`` also crosses dots, ``layer?.*.relu_1``); or a module name
    (``layer2``, ``blocks.3``), an alias of the last graph node inside that module, which is the
    module's output. A string may list several requests separated by commas.
    """
    items = _split_request(requested)
    if not items:
        raise NodeError(
            f"no node requested for {backbone.name}; run `stratad nodes {backbone.name}` to list them."
        )
    names = [info.name for info in list_nodes(backbone)]
    position = {name: index for index, name in enumerate(names)}
    modules: list[str] | None = None
    selected: set[int] = set()
    for item in items:
        if item == ALL_NODES:
            selected.update(range(len(names)))
        elif item in position:
            selected.add(position[item])
        elif _GLOB_CHARACTERS.intersection(item):
            matches = [position[name] for name in names if fnmatch.fnmatchcase(name, item)]
            if not matches:
                raise NodeError(
                    f"the pattern {item!r} matches no node of {backbone.name}; "
                    f"run `stratad nodes {backbone.name}` to list them."
                )
            selected.update(matches)
        else:
            if modules is None:
                modules = [name for name, _ in backbone.model.named_modules() if name]
            inside = [position[name] for name in names if name.startswith(item + ".")]
            if item in modules and inside:
                selected.add(max(inside))
            elif item in modules:
                raise _inside_leaf(backbone, item, names)
            else:
                raise _unknown_node(backbone, item, names + modules)
    return [names[index] for index in sorted(selected)]


def _split_request(requested: str | Sequence[str]) -> list[str]:
    parts = [requested] if isinstance(requested, str) else list(requested)
    return [item.strip() for part in parts for item in part.split(",") if item.strip()]


def _unknown_node(backbone: Backbone, item: str, candidates: list[str]) -> NodeError:
    close = difflib.get_close_matches(item, list(dict.fromkeys(candidates)), n=3, cutoff=0.6)
    hint = (
        f"did you mean {', '.join(close)}?" if close else f"run `stratad nodes {backbone.name}` to list them."
    )
    return NodeError(f"{backbone.name} has no node or module {item!r}; {hint}")


def _inside_leaf(backbone: Backbone, item: str, names: list[str]) -> NodeError:
    leaves = [name for name in names if item.startswith(name + ".")]
    if leaves:
        leaf = max(leaves, key=len)
        return NodeError(
            f"the module {item!r} of {backbone.name} runs inside the node {leaf!r}, which torch.fx "
            f"does not trace into; request {leaf!r} instead."
        )
    return NodeError(
        f"the module {item!r} of {backbone.name} is not used by its eval-mode graph; "
        f"run `stratad nodes {backbone.name}` to list the nodes."
    )
