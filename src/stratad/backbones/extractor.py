"""Features of many graph nodes from ONE forward pass that stops at the deepest requested node."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from stratad.backbones.nodes import build_graph_module, resolve_nodes
from stratad.backbones.registry import Backbone
from stratad.errors import ShapeError


class NodeExtractor(nn.Module):
    """``forward(images) -> {node: features}`` for every requested node of a backbone.

    ``images`` are float RGB in [0, 1], shape ``(B, 3, H, W)``; they are normalised with the
    backbone's mean / std here, so callers never do it. ``nodes`` accepts everything
    :func:`~stratad.backbones.nodes.resolve_nodes` does (names, module aliases, globs, ``all``); the
    output is keyed by the resolved node names (:attr:`nodes`, graph order). Outputs are float32,
    contiguous (NCHW), on ``output_device`` (the CPU by default; ``None`` keeps them on ``device``).

    The fx graph keeps only what the requested nodes need (dead-code elimination), the forward runs
    under ``torch.inference_mode`` (skipped while tracing / exporting), and with ``channels_last``
    model and input use that memory format, which makes CPU convolutions faster. The backbone
    stays frozen in eval mode: ``train()`` never switches BatchNorm to batch statistics.

    The wrapped modules are the backbone's own, not copies: ``backbone.model`` is moved to
    ``device`` and to the requested memory format (its results do not change), so extractors that
    share one backbone should agree on ``device`` and ``channels_last``.

    ``reduce`` (optional) is a module applied to every node's output inside the graph, right after
    the node runs (for example pooling maps to a small grid and casting to float16, as the
    feature-selection sweep does); outputs are then returned as ``reduce`` made them (dtype and
    memory format kept). The full-size maps never pile up, which makes a pass over many nodes
    faster and lighter.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        backbone: Backbone,
        nodes: str | Sequence[str],
        device: str | torch.device = "cpu",
        channels_last: bool = True,
        output_device: str | torch.device | None = "cpu",
        reduce: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone.name
        self.nodes: list[str] = resolve_nodes(backbone, nodes)
        self.device = torch.device(device)
        self.output_device = None if output_device is None else torch.device(output_device)
        self.channels_last = channels_last
        # The whole model moves, not just the modules the pruned graph uses, so that the backbone
        # stays on one device for everything else (node listing, receptive fields).
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        backbone.model.to(self.device, memory_format=memory_format)  # type: ignore[call-overload]
        self.reduced = reduce is not None
        self.graph_module = build_graph_module(backbone, self.nodes, reduce)
        self.register_buffer("mean", torch.tensor(backbone.mean, device=self.device).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(backbone.std, device=self.device).view(1, 3, 1, 1))
        self.eval()

    def train(self, mode: bool = True) -> NodeExtractor:
        super().train(mode)
        self.graph_module.eval()  # a frozen feature extractor: BatchNorm keeps its running statistics
        return self

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> network input on :attr:`device` (channels-last if configured)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ShapeError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ShapeError(
                f"expected float images in [0, 1], got dtype {images.dtype}; divide uint8 by 255"
            )
        x = (images.to(self.device, torch.float32) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward_normalised(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw graph outputs for an already normalised input (differentiable; used for gradients)."""
        return dict(self.graph_module(x))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
            raw = self.forward_normalised(self.normalise(images))
        else:
            with torch.inference_mode():
                raw = self.forward_normalised(self.normalise(images))
        target = self.output_device or self.device
        # The copy happens outside inference mode so the results are ordinary tensors: detectors that
        # train on features (SimpleNet, FastFlow) cannot use inference tensors in autograd.
        if self.reduced:
            # Nodes that share one snapshot (identities) keep sharing one tensor.
            copies: dict[int, torch.Tensor] = {}
            for node in self.nodes:
                if id(raw[node]) not in copies:
                    copies[id(raw[node])] = raw[node].to(target, copy=True)
            return {node: copies[id(raw[node])] for node in self.nodes}
        return {
            node: raw[node].to(target, torch.float32, memory_format=torch.contiguous_format, copy=True)
            for node in self.nodes
        }
