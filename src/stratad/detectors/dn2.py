"""DN2 (Bergman, Cohen, Hoshen, "Deep Nearest Neighbor Anomaly Detection", 2020; also the scoring of
PANDA, Reiss et al., CVPR 2021).

Image-level kNN: every image is represented by the globally pooled output of the backbone's final
pooling layer, and its anomaly score is the mean Euclidean distance to its ``neighbours`` nearest
training images (k = 2 in both papers). Several nodes are pooled and concatenated. No anomaly map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from stratad._options import bounded
from stratad.backbones.stages import NodeRule
from stratad.detectors.base import Detector, DetectorConfig, Scores, register_detector, state_tensor
from stratad.detectors.knn import IndexKind, NearestNeighbours
from stratad.errors import DetectorError
from stratad.features.patch import global_pool
from stratad.features.types import FeatureBatch


def pooled_embedding(batch: FeatureBatch) -> torch.Tensor:
    """Globally pooled features of every node of ``batch``, concatenated: ``(N, sum C)`` float32."""
    if not batch.nodes:
        raise DetectorError("no feature nodes given")
    parts = [global_pool(x.float()) for _, x in batch.items()]
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0].contiguous()


@dataclass
class DN2Config(DetectorConfig):
    #: number of nearest training images averaged into the score (the papers' k = 2)
    neighbours: int = bounded(2, low=1)
    index: IndexKind = IndexKind.exact


@register_detector
class DN2(Detector):
    name = "dn2"
    accepts_float16 = True
    config_class = DN2Config
    localizes = False
    # The final global pooling: timm's "global_pool" module (alias of its last graph node), torchvision's
    # "avgpool".
    default_nodes = NodeRule(pooled=True)

    config: DN2Config

    def __init__(self, config: DN2Config | None = None, **params: object) -> None:
        super().__init__(config, **params)
        self.bank_: torch.Tensor | None = None  # (N_train, C) pooled training features
        self._nn: NearestNeighbours | None = None

    def fit(self, train: FeatureBatch) -> DN2:
        if len(train) == 0:
            raise DetectorError("DN2 needs at least one training image")
        self.bank_ = pooled_embedding(train)
        self._nn = None
        return self

    def _index(self) -> NearestNeighbours:
        self._check_fitted("bank_")
        if self._nn is None:
            assert self.bank_ is not None
            self._nn = NearestNeighbours(self.config.index).fit(self.bank_)
        return self._nn

    def score(self, test: FeatureBatch) -> Scores:
        index = self._index()
        assert self.bank_ is not None
        queries = pooled_embedding(test)
        if queries.shape[1] != self.bank_.shape[1]:
            raise DetectorError(
                f"DN2 was fitted on {self.bank_.shape[1]} pooled channels but got {queries.shape[1]}; "
                "score with the nodes it was fitted on"
            )
        dists, _ = index.search(queries, k=self.config.neighbours)
        return Scores(dists.mean(axis=1, dtype="float32"), None)

    def module(self, nodes: Sequence[str]) -> nn.Module:
        from stratad.detectors.modules import DN2Module

        self._check_fitted("bank_")
        assert self.bank_ is not None
        return DN2Module(self, nodes, self.bank_, self.config.neighbours)

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted("bank_")
        assert self.bank_ is not None
        return {"bank": self.bank_}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.bank_ = state_tensor(state, "bank", 2, "DN2").float().contiguous()
        self._nn = None
