"""The unit of data between feature extraction and the detectors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from stratad.errors import ShapeError


@dataclass
class FeatureBatch:
    """Features of N images for an ordered set of graph nodes.

    ``features[node]`` is ``(N, C, h, w)`` for spatial nodes or ``(N, C)`` for pooled ones, float32
    on the CPU unless a detector asks otherwise. ``image_size`` is the (height, width) of the network
    input, which maps are later upsampled to.
    """

    features: dict[str, torch.Tensor]
    image_size: tuple[int, int]
    labels: torch.Tensor | None = field(default=None)

    def __post_init__(self) -> None:
        sizes = {t.shape[0] for t in self.features.values()}
        if len(sizes) > 1:
            raise ShapeError(f"nodes disagree on the number of images: {sorted(sizes)}")

    def __len__(self) -> int:
        first = next(iter(self.features.values()), None)
        return 0 if first is None else int(first.shape[0])

    @property
    def nodes(self) -> list[str]:
        return list(self.features)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.features.items())

    def subset(self, index: torch.Tensor | list[int]) -> FeatureBatch:
        idx = torch.as_tensor(index, dtype=torch.long)
        labels = None if self.labels is None else self.labels[idx]
        return FeatureBatch({n: t[idx] for n, t in self.features.items()}, self.image_size, labels)

    def select(self, nodes: list[str]) -> FeatureBatch:
        return FeatureBatch({n: self.features[n] for n in nodes}, self.image_size, self.labels)

    @staticmethod
    def concat(batches: list[FeatureBatch]) -> FeatureBatch:
        if not batches:
            raise ShapeError("no feature batches to concatenate")
        nodes = batches[0].nodes
        feats = {n: torch.cat([b.features[n] for b in batches]) for n in nodes}
        labels = None
        if all(b.labels is not None for b in batches):
            labels = torch.cat([b.labels for b in batches if b.labels is not None])
        return FeatureBatch(feats, batches[0].image_size, labels)
