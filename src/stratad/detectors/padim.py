"""PaDiM (Defard, Setkaliev, Loesch, Audigier, "PaDiM: a Patch Distribution Modeling Framework for
Anomaly Detection and Localization", ICPR workshops 2020).

The nodes are upsampled to the first node's grid and concatenated, a seeded random subset of
``n_features`` channels is kept (the paper's random dimensionality reduction: 100 of the 448 channels of
ResNet-18 layer1..layer3), and a Gaussian is fitted at every grid position: mean and covariance with the
paper's regulariser ``0.01 * I``. The anomaly map is the Mahalanobis distance of each position to its own
Gaussian; the image score is the map's maximum.

State: means ``(h*w, d)`` and inverse covariances ``(h*w, d, d)`` in float32 — 164 MB for d = 100 on a
64 x 64 grid (efficientnet_lite0 blocks.1 at 256 px).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stratad._options import bounded
from stratad.backbones.stages import NodeRule
from stratad.detectors.base import Detector, DetectorConfig, Scores, register_detector
from stratad.errors import DetectorError
from stratad.features.patch import spatial
from stratad.features.types import FeatureBatch


@dataclass
class PadimConfig(DetectorConfig):
    #: channels kept by the random subset (the paper's 100 for ResNet-18; capped at the channels available)
    n_features: int = bounded(100, low=1)
    #: added to every covariance diagonal (the paper's 0.01 * I keeps them invertible)
    regularization: float = bounded(0.01, low=0)
    #: grid positions processed together (bounds the (positions, d, d) working memory)
    position_chunk: int = bounded(256, low=1)
    seed: int = 0


@register_detector
class Padim(Detector):
    name = "padim"
    accepts_float16 = True
    config_class = PadimConfig
    localizes = True
    # The paper's ResNet layer1-3: the first stage at strides 4, 8 and 16.
    default_nodes = NodeRule(first_at=(4, 8, 16))

    config: PadimConfig

    def __init__(self, config: PadimConfig | None = None, **params: object) -> None:
        super().__init__(config, **params)
        self.channel_index_: torch.Tensor | None = None  # (d,) indices into the concatenated channels
        self.mean_: torch.Tensor | None = None  # (h*w, d)
        self.inv_covariance_: torch.Tensor | None = None  # (h*w, d, d)
        self.grid_: tuple[int, int] | None = None
        self.node_channels_: tuple[int, ...] | None = None

    def embed(self, batch: FeatureBatch, channel_index: torch.Tensor) -> torch.Tensor:
        """Selected channels of the concatenated, upsampled nodes as ``(N, h*w, d)`` float32."""
        if not batch.nodes:
            raise DetectorError("no feature nodes given")
        first = spatial(batch.nodes[0], batch.features[batch.nodes[0]])
        grid = (int(first.shape[-2]), int(first.shape[-1]))
        parts, offset = [], 0
        for node, x in batch.items():
            x = spatial(node, x)
            c = int(x.shape[1])
            # Choose channels before resizing: only d of the C channels are ever upsampled.
            local = channel_index[(channel_index >= offset) & (channel_index < offset + c)] - offset
            offset += c
            if local.numel() == 0:
                continue
            part = x.index_select(1, local).float()
            if tuple(part.shape[-2:]) != grid:
                # Nearest, as the paper's embedding_concat copies each coarse cell over its fine cells.
                part = F.interpolate(part, size=grid, mode="nearest")
            parts.append(part)
        emb = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return emb.flatten(2).transpose(1, 2).contiguous()

    def fit(self, train: FeatureBatch) -> Padim:
        if len(train) < 2:
            raise DetectorError("PaDiM needs at least two training images to estimate covariances")
        node_channels = tuple(int(spatial(n, x).shape[1]) for n, x in train.items())
        total = sum(node_channels)
        d = min(self.config.n_features, total)
        gen = torch.Generator().manual_seed(self.config.seed)
        channel_index = torch.randperm(total, generator=gen)[:d].sort().values
        first = train.features[train.nodes[0]]
        emb = self.embed(train, channel_index)  # (N, P, d)
        n, positions, _ = emb.shape
        mean = emb.mean(0)
        inv_cov = torch.empty(positions, d, d, dtype=torch.float32)
        eye = torch.eye(d, dtype=torch.float64)
        for start in range(0, positions, self.config.position_chunk):
            stop = start + self.config.position_chunk
            centred = (emb[:, start:stop] - mean[start:stop]).double()
            cov = torch.einsum("npd,npe->pde", centred, centred) / (n - 1) + self.config.regularization * eye
            inv_cov[start:stop] = torch.linalg.inv(cov).float()
        self.channel_index_ = channel_index
        self.mean_ = mean.contiguous()
        self.inv_covariance_ = inv_cov
        self.grid_ = (int(first.shape[-2]), int(first.shape[-1]))
        self.node_channels_ = node_channels
        return self

    def score(self, test: FeatureBatch) -> Scores:
        self._check_fitted("inv_covariance_")
        assert self.channel_index_ is not None and self.mean_ is not None
        assert self.inv_covariance_ is not None and self.grid_ is not None
        channels = tuple(int(spatial(n, x).shape[1]) for n, x in test.items())
        if channels != self.node_channels_:
            raise DetectorError(
                f"PaDiM was fitted on nodes with {self.node_channels_} channels but got {channels}; "
                "score with the nodes it was fitted on"
            )
        emb = self.embed(test, self.channel_index_)
        n, positions, _ = emb.shape
        if positions != self.mean_.shape[0]:
            raise DetectorError(
                f"PaDiM was fitted on a {self.grid_[0]}x{self.grid_[1]} feature grid but got {positions} "
                "positions; use the same image size for fitting and scoring"
            )
        dist = torch.empty(n, positions, dtype=torch.float32)
        for start in range(0, positions, self.config.position_chunk):
            stop = start + self.config.position_chunk
            delta = emb[:, start:stop] - self.mean_[start:stop]
            weighted = torch.einsum("npd,pde->npe", delta, self.inv_covariance_[start:stop])
            dist[:, start:stop] = (weighted * delta).sum(-1).clamp_min_(0.0).sqrt_()
        maps = dist.reshape(n, *self.grid_).numpy()
        return Scores(maps.reshape(n, -1).max(axis=1).astype(np.float32), maps)

    def module(self, nodes: Sequence[str]) -> nn.Module:
        from stratad.detectors.modules import PadimModule

        self._check_fitted("inv_covariance_")
        assert self.channel_index_ is not None and self.mean_ is not None
        assert self.inv_covariance_ is not None and self.node_channels_ is not None
        return PadimModule(
            self, nodes, self.node_channels_, self.channel_index_, self.mean_, self.inv_covariance_
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted("inv_covariance_")
        assert self.channel_index_ is not None and self.mean_ is not None
        assert self.inv_covariance_ is not None and self.grid_ is not None
        assert self.node_channels_ is not None
        return {
            "channel_index": self.channel_index_,
            "mean": self.mean_,
            "inv_covariance": self.inv_covariance_,
            "grid": torch.tensor(self.grid_, dtype=torch.int64),
            "node_channels": torch.tensor(self.node_channels_, dtype=torch.int64),
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = [
            k for k in ("channel_index", "mean", "inv_covariance", "grid", "node_channels") if k not in state
        ]
        if missing:
            raise DetectorError(f"PaDiM state lacks {', '.join(missing)}")
        self.channel_index_ = state["channel_index"].long().contiguous()
        self.mean_ = state["mean"].float().contiguous()
        self.inv_covariance_ = state["inv_covariance"].float().contiguous()
        h, w = (int(v) for v in state["grid"].tolist())
        self.grid_ = (h, w)
        self.node_channels_ = tuple(int(v) for v in state["node_channels"].tolist())
