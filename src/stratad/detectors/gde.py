"""Patch-level Gaussian density estimation (GDE), the localisation protocol of DS2 (dense self-supervised
pretraining for anomaly localisation) and of CutPaste (Li, Sohn, Yoon, Pfister, CVPR 2021).

One Gaussian with a Ledoit-Wolf shrunk covariance is fitted to the features of ALL grid positions of
all training images together (unlike PaDiM's Gaussian per position), so it models "what a normal patch
looks like" wherever it appears. Each position's Mahalanobis distance gives the map ``(N, h, w)``; the
image score is the map's maximum.

Its native input is the patch protocol of :mod:`stratad.features.patches`: 32 x 32 patches cut at
stride 4 from 256 x 256 images, each encoded alone and globally pooled, a ``(N, C, 57, 57)`` grid; the
default nodes are therefore the backbone's final pooled embedding (DS2 and CutPaste use ResNet-18's
pooled output). It equally works on plain dense node features (choose spatial nodes then, e.g.
``blocks.3``). Several nodes are resized (bilinear) to the first node's grid and concatenated along
channels; a pooled node ``(N, C)`` is treated as a 1 x 1 map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from stratad._options import bounded
from stratad.backbones.stages import NodeRule
from stratad.detectors.base import Detector, DetectorConfig, Scores, register_detector, state_tensor
from stratad.detectors.gaussian import ledoit_wolf_chunks, whitener
from stratad.errors import DetectorError
from stratad.features.patch import flatten_patches, resize_to
from stratad.features.types import FeatureBatch


@dataclass
class GdeConfig(DetectorConfig):
    #: rows (grid positions) processed together while fitting and scoring; bounds working memory only
    chunk_rows: int = bounded(16384, low=1)


def dense_embedding(batch: FeatureBatch) -> torch.Tensor:
    """Nodes resized to the first node's grid and concatenated: ``(N, sum C, h, w)`` float32."""
    if not batch.nodes:
        raise DetectorError("no feature nodes given")
    maps = [x.float() if x.ndim == 4 else x.float().reshape(x.shape[0], -1, 1, 1) for _, x in batch.items()]
    grid = (int(maps[0].shape[-2]), int(maps[0].shape[-1]))
    if len(maps) == 1:
        return maps[0]
    return torch.cat([resize_to(m, grid) for m in maps], dim=1)


@register_detector
class GaussianDensity(Detector):
    name = "gde"
    accepts_float16 = True
    config_class = GdeConfig
    localizes = True
    default_nodes = NodeRule(pooled=True)

    config: GdeConfig

    def __init__(self, config: GdeConfig | None = None, **params: object) -> None:
        super().__init__(config, **params)
        self.mean_: torch.Tensor | None = None  # (C,)
        self.whitener_: torch.Tensor | None = None  # (C, D): ||(x - mean) W|| is the Mahalanobis distance

    def fit(self, train: FeatureBatch) -> GaussianDensity:
        if len(train) == 0:
            raise DetectorError("GDE needs at least one training image")
        emb = dense_embedding(train)
        n, _, h, w = emb.shape
        if n * h * w < 2:
            raise DetectorError("GDE needs at least two feature positions to estimate a covariance")
        # Whole images per chunk, flattened one chunk at a time: no copy of all training rows.
        images = max(1, self.config.chunk_rows // (h * w))
        mean, cov, _ = ledoit_wolf_chunks(
            lambda: (flatten_patches(emb[s : s + images]) for s in range(0, n, images))
        )
        self.whitener_ = whitener(cov, "the patch features").float()
        self.mean_ = mean.float()
        return self

    def score(self, test: FeatureBatch) -> Scores:
        self._check_fitted("whitener_")
        assert self.mean_ is not None and self.whitener_ is not None
        emb = dense_embedding(test)
        n, c, h, w = emb.shape
        if c != self.mean_.shape[0]:
            raise DetectorError(
                f"GDE was fitted on {self.mean_.shape[0]} channels but got {c}; "
                "score with the nodes it was fitted on"
            )
        images = max(1, self.config.chunk_rows // (h * w))
        dist = torch.empty(n, h * w, dtype=torch.float32)
        for start in range(0, n, images):
            z = (flatten_patches(emb[start : start + images]) - self.mean_) @ self.whitener_
            dist[start : start + images] = z.square().sum(1).sqrt().reshape(-1, h * w)
        maps = dist.reshape(n, h, w).numpy()
        return Scores(maps.reshape(n, -1).max(axis=1).astype(np.float32), maps)

    def dimension(self) -> int:
        """Degrees of freedom of the fitted Gaussian (for chi-square working points)."""
        self._check_fitted("whitener_")
        assert self.whitener_ is not None
        return int(self.whitener_.shape[1])

    def module(self, nodes: Sequence[str]) -> nn.Module:
        from stratad.detectors.modules import GdeModule

        self._check_fitted("whitener_")
        assert self.mean_ is not None and self.whitener_ is not None
        return GdeModule(self, nodes, self.mean_, self.whitener_)

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted("whitener_")
        assert self.mean_ is not None and self.whitener_ is not None
        return {"mean": self.mean_, "whitener": self.whitener_}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if "mean" not in state or "whitener" not in state:
            raise DetectorError("GDE state needs mean and whitener")
        self.mean_ = state_tensor(state, "mean", 1, "GDE").float().contiguous()
        self.whitener_ = state_tensor(state, "whitener", 2, "GDE").float().contiguous()
