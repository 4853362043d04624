"""SimpleNet (Liu, Zhou, Xia, Zhou, CVPR 2023; official code DonaldRR/SimpleNet): a discriminator
trained on frozen node features to tell normal patches from normal patches plus Gaussian noise.

As in the official code:
- the patch features are PatchCore's (3 x 3 local aggregation of every node, resized to the first
  node's grid, channel pooling to ``node_dim`` per node and ``target_dim`` overall);
- a feature adaptor, one linear layer (``Projection`` with one layer), Xavier-initialised;
- anomalous features are the adapted normal features plus Gaussian noise; the official standard
  deviation is an absolute 0.015, set for WRN-50's pooled features, on which Lite0's features (~2.0
  per dimension) collapse the training (the loss stays at 1.0). stratad measures the noise in units of
  the training patch features' mean per-dimension standard deviation (``noise_scale=feature``) and
  uses 0.5 of it, the best of 0.0075, 0.05, 0.15 and 0.5 on synthetic NSA defects of MTD's training
  images (``benchmarks/simplenet_noise.py``; no test image involved);
  ``-p noise_scale=absolute -p noise_std=0.015`` is the official setting;
- a discriminator of two layers: Linear(D, ``hidden``) + BatchNorm + LeakyReLU(0.2), then Linear(hidden,
  1) without bias;
- the truncated L1 loss ``max(0, margin - d(normal)) + max(0, margin + d(anomalous))``, margin 0.5;
- AdamW for the adaptor at 1e-4, Adam for the discriminator at 2e-4 with weight decay 1e-5;
- batches of 8 images, 160 epochs (the official 40 meta-epochs x 4 GAN epochs; the selection study
  keeps the final model, no checkpoint is chosen on test data);
- the anomaly score of a patch is ``-d(adaptor(feature))``, the image score the maximum of the map.

Training runs on the features it is given (a sweep's cache, or the pipeline's one extraction), so an
epoch costs the adaptor and the discriminator, not the backbone. Same seed, same weights (CPU).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from stratad._options import bounded
from stratad.backbones.stages import NodeRule
from stratad.detectors.base import Detector, DetectorConfig, Scores, register_detector, state_tensor
from stratad.errors import DetectorError
from stratad.features.patch import Embedding, embed_nodes, flatten_patches
from stratad.features.types import FeatureBatch

#: images scored together (bounds the embedding and the discriminator's activations)
SCORE_CHUNK = 16


class NoiseScale(str, enum.Enum):
    """What ``noise_std`` is measured in."""

    #: absolute feature units (the official code, set for WRN-50's features)
    absolute = "absolute"
    #: the mean per-dimension standard deviation of the training patch features
    feature = "feature"


@dataclass
class SimpleNetConfig(DetectorConfig):
    #: local neighbourhood aggregated around each patch (PatchCore's)
    patch_size: int = bounded(3, low=1)
    #: per-node channel pooling (official: 1536); with ``embedding=average`` 0 keeps every channel
    node_dim: int = bounded(1536, low=0)
    #: channel pooling of the joined nodes; 0 keeps every channel (official: 1536)
    target_dim: int = bounded(1536, low=0)
    #: passes over the training images (official: 40 meta-epochs x 4 GAN epochs)
    epochs: int = bounded(160, low=1)
    #: training images per optimisation step (official: 8)
    batch_size: int = bounded(8, low=1)
    #: standard deviation of the Gaussian noise that makes anomalous features, in ``noise_scale`` units
    #: (official: 0.015 absolute; stratad: 0.5 of the features' scale, chosen on synthetic defects)
    noise_std: float = bounded(0.5, low=0)
    #: the unit of ``noise_std``
    noise_scale: NoiseScale = NoiseScale.feature
    #: margin of the truncated L1 loss
    margin: float = bounded(0.5, low=0)
    #: width of the discriminator's hidden layer (official: 1024)
    hidden: int = bounded(1024, low=1)
    #: learning rates: the adaptor's (AdamW) and the discriminator's (Adam)
    adaptor_lr: float = bounded(1e-4, low=0, low_open=True)
    discriminator_lr: float = bounded(2e-4, low=0, low_open=True)
    #: the discriminator's weight decay
    weight_decay: float = bounded(1e-5, low=0)
    #: the patch feature (:class:`~stratad.features.patch.Embedding`); the official code unfolds
    embedding: Embedding = Embedding.unfold
    seed: int = 0


def _adaptor(dim: int) -> nn.Linear:
    layer = nn.Linear(dim, dim)
    nn.init.xavier_normal_(layer.weight)
    return layer


class Discriminator(nn.Module):
    """Linear + BatchNorm + LeakyReLU(0.2), then a linear score without bias (official ``Discriminator``
    with two layers)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2))
        self.tail = nn.Linear(hidden, 1, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(x))[:, 0]


@register_detector
class SimpleNet(Detector):
    name = "simplenet"
    config_class = SimpleNetConfig
    localizes = True
    accepts_float16 = True
    # The official code and both studies use WideResNet-50 layer2 + layer3: the last stages at
    # strides 8 and 16, as PatchCore.
    default_nodes = NodeRule(last_at=(8, 16))

    config: SimpleNetConfig

    def __init__(self, config: SimpleNetConfig | None = None, **params: object) -> None:
        super().__init__(config, **params)
        self.adaptor_: nn.Linear | None = None
        self.discriminator_: Discriminator | None = None
        #: mean training loss per epoch
        self.losses_: list[float] = []
        #: called after every epoch with (epoch, epochs, mean loss, seconds so far)
        self.progress: Callable[[int, int, float, float], None] | None = None
        #: the device training runs on (the pipeline's); the fitted layers come back to the CPU
        self.train_device = "cpu"

    def validate_config(self) -> None:
        c = self.config
        if c.patch_size % 2 == 0:
            raise DetectorError(f"patch_size must be an odd positive number, got {c.patch_size}")
        if c.embedding is Embedding.unfold and (c.node_dim <= 0 or c.target_dim <= 0):
            raise DetectorError("the unfold embedding needs node_dim and target_dim above 0")

    def embed(self, batch: FeatureBatch) -> torch.Tensor:
        c = self.config
        return embed_nodes(batch.features, batch.nodes, c.patch_size, c.node_dim, c.target_dim, c.embedding)

    def fit(self, train: FeatureBatch) -> SimpleNet:
        if len(train) == 0:
            raise DetectorError("SimpleNet needs at least one training image")
        c = self.config
        emb = self.embed(train)
        n, dim, h, w = emb.shape
        per_image = emb.permute(0, 2, 3, 1).reshape(n, h * w, dim)  # patches of each image
        sigma = c.noise_std
        if c.noise_scale is NoiseScale.feature:
            sigma *= float(per_image.reshape(-1, dim).std(dim=0).mean())
        #: the noise's standard deviation in feature units
        self.noise_sigma_ = sigma
        generator = torch.Generator().manual_seed(c.seed)
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, the caller's RNG untouched
            torch.manual_seed(c.seed)
            adaptor, discriminator = _adaptor(dim), Discriminator(dim, c.hidden)
        device = torch.device(self.train_device)
        adaptor, discriminator = adaptor.to(device), discriminator.to(device)
        adaptor_opt = torch.optim.AdamW(adaptor.parameters(), lr=c.adaptor_lr)
        discriminator_opt = torch.optim.Adam(
            discriminator.parameters(), lr=c.discriminator_lr, weight_decay=c.weight_decay
        )
        adaptor.train()
        discriminator.train()
        self.losses_ = []
        t0 = time.perf_counter()
        with torch.enable_grad():
            for epoch in range(c.epochs):
                order = torch.randperm(n, generator=generator)
                total, steps = 0.0, 0
                for start in range(0, n, c.batch_size):
                    patches = per_image[order[start : start + c.batch_size]].reshape(-1, dim)
                    true = adaptor(patches.to(device))
                    noise = (torch.randn(true.shape, generator=generator) * sigma).to(device)
                    fake = true + noise
                    scores = discriminator(torch.cat([true, fake]))
                    true_scores, fake_scores = scores[: len(true)], scores[len(true) :]
                    loss = (c.margin - true_scores).clamp_min(0).mean() + (c.margin + fake_scores).clamp_min(
                        0
                    ).mean()
                    adaptor_opt.zero_grad()
                    discriminator_opt.zero_grad()
                    loss.backward()
                    adaptor_opt.step()
                    discriminator_opt.step()
                    total += float(loss.detach())
                    steps += 1
                self.losses_.append(total / steps)
                if self.progress is not None:
                    self.progress(epoch + 1, c.epochs, self.losses_[-1], time.perf_counter() - t0)
        self.adaptor_ = adaptor.cpu().eval().requires_grad_(False)
        self.discriminator_ = discriminator.cpu().eval().requires_grad_(False)
        return self

    def _patch_scores(self, emb: torch.Tensor) -> torch.Tensor:
        """(N, D, h, w) embeddings -> (N, h, w) anomaly scores ``-d(adaptor(x))``."""
        assert self.adaptor_ is not None and self.discriminator_ is not None
        n, _, h, w = emb.shape
        with torch.no_grad():
            return -self.discriminator_(self.adaptor_(flatten_patches(emb))).reshape(n, h, w)

    def score(self, test: FeatureBatch) -> Scores:
        """Scores in chunks of :data:`SCORE_CHUNK` images (embedding included), so memory does not grow
        with the number of images."""
        self._check_fitted("discriminator_")
        assert self.adaptor_ is not None
        chunks = []
        for start in range(0, max(len(test), 1), SCORE_CHUNK):
            part = FeatureBatch({n: x[start : start + SCORE_CHUNK] for n, x in test.items()}, test.image_size)
            emb = self.embed(part)
            if emb.shape[1] != self.adaptor_.in_features:
                raise DetectorError(
                    f"SimpleNet was trained on {self.adaptor_.in_features}-d patches but these nodes give "
                    f"{emb.shape[1]}-d patches: score with the nodes and options it was trained with"
                )
            chunks.append(self._patch_scores(emb))
        maps = torch.cat(chunks).numpy().astype(np.float32)
        return Scores(maps.reshape(len(maps), -1).max(axis=1), maps)

    def module(self, nodes: Sequence[str]) -> nn.Module:
        from stratad.detectors.modules import SimpleNetModule

        self._check_fitted("discriminator_")
        assert self.adaptor_ is not None and self.discriminator_ is not None
        c = self.config
        return SimpleNetModule(
            self, nodes, self.adaptor_, self.discriminator_, c.patch_size, c.node_dim, c.target_dim,
            c.embedding.value,
        )  # fmt: skip

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted("discriminator_")
        assert self.adaptor_ is not None and self.discriminator_ is not None
        state = {f"adaptor.{k}": v for k, v in self.adaptor_.state_dict().items()}
        state.update({f"discriminator.{k}": v for k, v in self.discriminator_.state_dict().items()})
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        weight = state_tensor(state, "adaptor.weight", 2, "SimpleNet")
        hidden = state_tensor(state, "discriminator.tail.weight", 2, "SimpleNet")
        dim = int(weight.shape[1])
        with torch.random.fork_rng(devices=[]):  # the layers' throw-away initialisation draws
            adaptor, discriminator = nn.Linear(dim, dim), Discriminator(dim, int(hidden.shape[1]))
        try:
            adaptor.load_state_dict(
                {k.removeprefix("adaptor."): v for k, v in state.items() if k.startswith("adaptor.")}
            )
            discriminator.load_state_dict(
                {
                    k.removeprefix("discriminator."): v
                    for k, v in state.items()
                    if k.startswith("discriminator.")
                }
            )
        except RuntimeError as exc:
            raise DetectorError(
                f"SimpleNet state does not fit its layers: {str(exc).splitlines()[0]}"
            ) from None
        self.adaptor_ = adaptor.eval().requires_grad_(False)
        self.discriminator_ = discriminator.eval().requires_grad_(False)
