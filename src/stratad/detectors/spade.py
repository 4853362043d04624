"""SPADE (Cohen & Hoshen, "Sub-Image Anomaly Detection with Deep Pyramid Correspondences", 2020).

Two stages. (1) Image retrieval: the pooled feature of a retrieval node finds the ``image_neighbours``
nearest training images (K = 50 in the paper); the mean distance to them is the image score, as in the
paper (option ``image_score=map_max`` uses the map's maximum instead). (2) Pixel correspondences: every
test feature is compared with the features of those K images only, at every position, and its mean
distance to the ``pixel_neighbours`` nearest (kappa = 1) is its anomaly score. Per node maps are
resized to the first pixel node's grid and summed (``combine=sum``, the paper's feature pyramid
ensemble) or the nodes' features are resized and concatenated first (``combine=concat``).

Which node does what, in the order of the FeatureBatch (graph order: the pipeline resolves nodes so):
- the retrieval node is ``retrieval_node`` if given (a graph node name, or a module name standing for
  its last graph node), otherwise the LAST node; it is globally average pooled;
- the pixel nodes are every node with a spatial map (more than one position), including the retrieval
  node when it is spatial. A pooled node (``global_pool``, ``avgpool``: ``(N, C)`` or ``(N, C, 1, 1)``)
  only serves retrieval.
So ``--nodes blocks.2,blocks.3,blocks.4,global_pool`` (the default for efficientnet_lite0, the analogue
of the paper's ResNet layer1..layer3 + avgpool) retrieves with the pooled classifier features and builds
maps from the three blocks; ``--nodes blocks.2,blocks.3`` retrieves with pooled blocks.3 and builds maps
from both.

Training features are kept as tensors ``(N, h, w, C)`` per pixel node; for each test image an exact
index of only its K retrieved images' features is built through the shared
:class:`~stratad.detectors.knn.NearestNeighbours` (an approximate index would cost more to build than it
saves on K images).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from stratad._options import bounded
from stratad.backbones.stages import NodeRule
from stratad.detectors.base import Detector, DetectorConfig, Scores, register_detector, state_tensor
from stratad.detectors.knn import IndexKind, NearestNeighbours
from stratad.errors import DetectorError
from stratad.features.patch import global_pool, resize_to
from stratad.features.types import FeatureBatch


class SpadeCombine(str, enum.Enum):
    sum = "sum"
    concat = "concat"


class SpadeImageScore(str, enum.Enum):
    knn = "knn"
    map_max = "map_max"


@dataclass
class SpadeConfig(DetectorConfig):
    #: K: training images retrieved per test image; also the k of the kNN image score (the paper's 50)
    image_neighbours: int = bounded(50, low=1)
    #: kappa: nearest training features averaged into a pixel score (the paper's 1)
    pixel_neighbours: int = bounded(1, low=1)
    #: node whose pooled feature retrieves images; None: the last node of the FeatureBatch
    retrieval_node: str | None = None
    #: sum per-node maps (the paper) or concatenate per-node features before the pixel kNN
    combine: SpadeCombine = SpadeCombine.sum
    #: knn: mean distance of the pooled feature to the K retrieved images (the paper); map_max: map maximum
    image_score: SpadeImageScore = SpadeImageScore.knn
    #: index over the pooled training features (retrieval)
    index: IndexKind = IndexKind.exact


def find_node(name: str, nodes: Sequence[str]) -> int:
    """Position of ``name`` in ``nodes``; a module name matches its last graph node (``name.*``)."""
    if name in nodes:
        return list(nodes).index(name)
    inside = [i for i, n in enumerate(nodes) if n.startswith(name + ".")]
    if not inside:
        raise DetectorError(
            f"node {name!r} is not among the extracted nodes ({', '.join(nodes)}); add it to --nodes"
        )
    return inside[-1]


def _is_spatial(x: torch.Tensor) -> bool:
    return x.ndim == 4 and x.shape[-2] * x.shape[-1] > 1


@register_detector
class Spade(Detector):
    name = "spade"
    accepts_float16 = True
    config_class = SpadeConfig
    localizes = True
    # The paper's ResNet layer1-3 for pixels and the pooled feature for retrieval: the last three
    # stage ends up to stride 16, and the pooled output.
    default_nodes = NodeRule(last_up_to=(3, 16), pooled=True)

    config: SpadeConfig

    def __init__(self, config: SpadeConfig | None = None, **params: object) -> None:
        super().__init__(config, **params)
        self.retrieval_bank_: torch.Tensor | None = None  # (N, C_r) pooled retrieval features
        self.pixel_banks_: list[torch.Tensor] | None = None  # per pixel part: (N, h, w, C)
        self._nn: NearestNeighbours | None = None

    # -- features --
    def retrieval_features(self, batch: FeatureBatch) -> torch.Tensor:
        nodes = batch.nodes
        if not nodes:
            raise DetectorError("no feature nodes given")
        node = (
            nodes[-1]
            if self.config.retrieval_node is None
            else nodes[find_node(self.config.retrieval_node, nodes)]
        )
        return global_pool(batch.features[node].float()).contiguous()

    def pixel_parts(self, batch: FeatureBatch) -> list[torch.Tensor]:
        """Pixel features ``(N, h, w, C)``: one per spatial node (sum) or one concatenation (concat)."""
        maps = [x.float() for _, x in batch.items() if _is_spatial(x)]
        if not maps:
            raise DetectorError(
                "SPADE needs at least one node with a spatial map for its pixel scores; "
                f"add one to --nodes (got {', '.join(batch.nodes)})"
            )
        if self.config.combine is SpadeCombine.concat:
            grid = (int(maps[0].shape[-2]), int(maps[0].shape[-1]))
            maps = [torch.cat([resize_to(m, grid) for m in maps], dim=1)]
        return [m.permute(0, 2, 3, 1).contiguous() for m in maps]

    # -- fit / score --
    def fit(self, train: FeatureBatch) -> Spade:
        if len(train) == 0:
            raise DetectorError("SPADE needs at least one training image")
        self.retrieval_bank_ = self.retrieval_features(train)
        self.pixel_banks_ = self.pixel_parts(train)
        self._nn = None
        return self

    def _index(self) -> NearestNeighbours:
        self._check_fitted("retrieval_bank_")
        if self._nn is None:
            assert self.retrieval_bank_ is not None
            self._nn = NearestNeighbours(self.config.index).fit(self.retrieval_bank_)
        return self._nn

    def score(self, test: FeatureBatch) -> Scores:
        index = self._index()
        assert self.retrieval_bank_ is not None and self.pixel_banks_ is not None
        pooled = self.retrieval_features(test)
        parts = self.pixel_parts(test)
        self._check_compatible(pooled, parts)
        image_dists, neighbours = index.search(pooled, k=self.config.image_neighbours)
        n = len(test)
        grid = (int(parts[0].shape[1]), int(parts[0].shape[2]))
        maps = np.empty((n, *grid), dtype=np.float32)
        for i in range(n):
            retrieved = torch.as_tensor(neighbours[i])
            total: torch.Tensor | None = None
            for bank, queries in zip(self.pixel_banks_, parts, strict=True):
                _, h, w, c = queries.shape
                local = NearestNeighbours(IndexKind.exact).fit(bank[retrieved].reshape(-1, c))
                dists, _ = local.search(queries[i].reshape(-1, c), k=self.config.pixel_neighbours)
                node_map = resize_to(torch.from_numpy(dists.mean(axis=1)).reshape(1, 1, h, w), grid)[0, 0]
                total = node_map if total is None else total + node_map
            assert total is not None
            maps[i] = total.numpy()
        if self.config.image_score is SpadeImageScore.knn:
            image_scores = image_dists.mean(axis=1).astype(np.float32)
        else:
            image_scores = maps.reshape(n, -1).max(axis=1).astype(np.float32)
        return Scores(image_scores, maps)

    def _check_compatible(self, pooled: torch.Tensor, parts: list[torch.Tensor]) -> None:
        assert self.retrieval_bank_ is not None and self.pixel_banks_ is not None
        fitted = (self.retrieval_bank_.shape[1], [int(b.shape[-1]) for b in self.pixel_banks_])
        given = (pooled.shape[1], [int(p.shape[-1]) for p in parts])
        if fitted != given:
            raise DetectorError(
                f"SPADE was fitted with retrieval / pixel channels {fitted} but got {given}; "
                "score with the nodes (and combine mode) it was fitted with"
            )

    def module(self, nodes: Sequence[str]) -> nn.Module:
        from stratad.detectors.modules import SpadeModule

        self._check_fitted("retrieval_bank_")
        assert self.retrieval_bank_ is not None and self.pixel_banks_ is not None
        c = self.config
        retrieval = nodes[-1] if c.retrieval_node is None else nodes[find_node(c.retrieval_node, list(nodes))]
        return SpadeModule(
            self,
            nodes,
            retrieval,
            self.pixel_banks_,
            self.retrieval_bank_,
            c.image_neighbours,
            c.pixel_neighbours,
            c.combine is SpadeCombine.concat,
            c.image_score is SpadeImageScore.knn,
        )

    # -- state --
    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted("retrieval_bank_")
        assert self.retrieval_bank_ is not None and self.pixel_banks_ is not None
        state = {"retrieval_bank": self.retrieval_bank_}
        state.update({f"pixel_bank.{i}": b for i, b in enumerate(self.pixel_banks_)})
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        count = sum(1 for k in state if k.startswith("pixel_bank."))
        if "retrieval_bank" not in state or count == 0:
            raise DetectorError("SPADE state needs retrieval_bank and at least one pixel_bank.<i>")
        self.retrieval_bank_ = state_tensor(state, "retrieval_bank", 2, "SPADE").float().contiguous()
        self.pixel_banks_ = [state[f"pixel_bank.{i}"].float().contiguous() for i in range(count)]
        self._nn = None
