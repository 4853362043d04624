"""Dense self-supervised pretraining: PixPro (Xie et al., CVPR 2021; official code zdaxie/PixPro) and
DS2 (He et al., "Learning Transferable Representations for Image Anomaly Localization Using Dense
Pretraining"), producing backbone weights every detector loads with ``--weights``.

PixPro, as in the official code (base setting, no instance branch):
- two views of each image: a random resized crop (scale 0.08-1, aspect 3/4-4/3), a horizontal flip
  with probability 0.5, colour jitter (brightness, contrast, saturation 0.4, 0.4, 0.2 and a small
  per-channel shift standing in for hue, with probability 0.8) and grayscale with probability 0.2;
  each view remembers where it lies in the original image. Not done here: the official BYOL-style
  Gaussian blur and solarisation, and the learning-rate warm-up;
- an online encoder (the backbone to its last stage) with a projector (1x1 conv to ``inner_dim``
  (4096), BatchNorm, ReLU, 1x1 conv to ``out_dim`` (256)) and a momentum encoder (the exponential
  average of the online weights; momentum rising from 0.99 to 1 along a cosine over all steps);
- the pixel propagation module on the online projection: ``y_i = sum_j max(cos(x_i, x_j), 0)^2
  g(x_j)`` with ``g`` one 1x1 convolution, then L2-normalised;
- positive pairs: feature-map pixels of the two views whose centres, mapped back to the original
  image, lie closer than 0.7 of the larger feature-bin diagonal;
- the loss ``-2 * mean cos(y_i, k_j)`` over positive pairs ``(i, j)``, ``k`` the momentum encoder's
  normalised projection of the other view, symmetrised over the two views.

DS2, the paper's variant: positive pairs are the pixel pairs closer than ``delta`` = 0.1 in
normalised image coordinates OR, for each pixel of one view, its most similar pixel of the other
view in the momentum encoder's backbone features (top-1 cosine); two feature scales, the last two
stages, each with its own projector and a shared pixel propagation module, the two losses averaged.

The optimiser is SGD with momentum 0.9, weight decay 1e-5 and a cosine learning-rate schedule from
``lr``: the official LARS at batch 1024 with synchronised BatchNorm is GPU work. Here the backbone's
BatchNorm keeps its running statistics (CPU batches of 16 would give noisy batch statistics; its
affine weights train), the projectors' BatchNorm trains. The saved weights are the online backbone's.
"""

from __future__ import annotations

import copy
import enum
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stratad._options import bounded
from stratad.backbones.registry import Backbone
from stratad.errors import StratadError
from stratad.export.io import read_resume, tensors_digest, write_resume


class Method(str, enum.Enum):
    pixpro = "pixpro"
    ds2 = "ds2"


@dataclass
class PretrainConfig:
    method: Method = Method.pixpro
    epochs: int = bounded(1, low=1)
    #: side of each view (PixPro: 224)
    image_size: int = bounded(224, low=32)
    batch_size: int = bounded(16, low=2)
    lr: float = bounded(0.05, low=0, low_open=True)
    weight_decay: float = bounded(1e-5, low=0)
    #: the momentum encoder's starting momentum (rises to 1 along a cosine)
    momentum: float = bounded(0.99, low=0, high=1)
    #: PixPro's positive radius, in larger feature-bin diagonals
    pos_ratio: float = bounded(0.7, low=0, low_open=True)
    #: DS2's positive radius in normalised image coordinates
    delta: float = bounded(0.1, low=0, low_open=True)
    #: the propagation's sharpness (PixPro: 2)
    gamma: float = bounded(2.0, low=0, low_open=True)
    #: the projector's hidden and output channels (PixPro: 4096, 256)
    inner_dim: int = bounded(4096, low=1)
    out_dim: int = bounded(256, low=1)
    seed: int = 0


class Projector(nn.Module):
    """1x1 conv -> BatchNorm -> ReLU -> 1x1 conv (PixPro's ``MLP2d``)."""

    def __init__(self, channels: int, inner: int, out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, inner, 1), nn.BatchNorm2d(inner), nn.ReLU(), nn.Conv2d(inner, out, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Propagation(nn.Module):
    """The pixel propagation module: ``y_i = sum_j max(cos(x_i, x_j), 0)^gamma g(x_j)``."""

    def __init__(self, channels: int, gamma: float) -> None:
        super().__init__()
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        value = F.normalize(self.value(x), dim=1).view(n, c, -1)
        unit = F.normalize(x, dim=1).view(n, c, -1)
        attention = torch.bmm(unit.transpose(1, 2), unit).clamp_min(0) ** self.gamma
        return torch.bmm(value, attention.transpose(1, 2)).view(n, c, h, w)


@dataclass
class View:
    """A view's pixels and its box in the original image, normalised to [0, 1]: (x0, y0, x1, y1);
    a flipped view has x0 > x1 (its pixels run right to left)."""

    image: torch.Tensor
    box: torch.Tensor


def random_view(image: torch.Tensor, size: int, generator: torch.Generator) -> View:
    """A random resized crop (scale 0.08-1, log-uniform aspect 3/4-4/3), flip, colour jitter and
    grayscale of a float image (3, H, W) in [0, 1], with its box."""
    _, height, width = image.shape

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    for _ in range(10):
        area = uniform(0.08, 1.0) * height * width
        aspect = math.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            x0, y0 = int(uniform(0, width - w + 1)), int(uniform(0, height - h + 1))
            break
    else:  # the whole image
        x0, y0, w, h = 0, 0, width, height
    crop = F.interpolate(
        image[None, :, y0 : y0 + h, x0 : x0 + w], size=(size, size), mode="bilinear", align_corners=False
    )[0]
    box = torch.tensor([x0 / width, y0 / height, (x0 + w) / width, (y0 + h) / height])
    if uniform(0, 1) < 0.5:
        crop = crop.flip(-1)
        box = box[[2, 1, 0, 3]]
    if uniform(0, 1) < 0.8:  # brightness, contrast, saturation 0.4 / 0.4 / 0.2; a small hue-like tint
        crop = crop * uniform(0.6, 1.4)
        mean = crop.mean()
        crop = (crop - mean) * uniform(0.6, 1.4) + mean
        gray = crop.mean(dim=0, keepdim=True)
        crop = (crop - gray) * uniform(0.8, 1.2) + gray
        crop = crop + torch.tensor([uniform(-0.1, 0.1) for _ in range(3)]).view(3, 1, 1) * 0.5
    if uniform(0, 1) < 0.2:
        crop = crop.mean(dim=0, keepdim=True).expand(3, -1, -1)
    return View(crop.clamp(0, 1), box)


def pixel_centres(
    box: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centres (N, H*W) of a view's feature pixels in original-image coordinates, and the bin
    diagonal (N,) of its feature map."""
    bin_w = (box[:, 2] - box[:, 0]) / width
    bin_h = (box[:, 3] - box[:, 1]) / height
    xs = (torch.arange(width, dtype=box.dtype) + 0.5).view(1, 1, -1).expand(1, height, width).reshape(1, -1)
    ys = (torch.arange(height, dtype=box.dtype) + 0.5).view(1, -1, 1).expand(1, height, width).reshape(1, -1)
    cx = xs * bin_w[:, None] + box[:, 0:1]
    cy = ys * bin_h[:, None] + box[:, 1:2]
    return cx, cy, torch.sqrt(bin_w**2 + bin_h**2)


def centre_distances(
    box_a: torch.Tensor, box_b: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, HW, HW) distances between the two views' pixel centres in the original image, and the
    larger bin diagonal (N, 1, 1)."""
    ax, ay, da = pixel_centres(box_a, height, width)
    bx, by, db = pixel_centres(box_b, height, width)
    d = torch.sqrt((ax[:, :, None] - bx[:, None, :]) ** 2 + (ay[:, :, None] - by[:, None, :]) ** 2)
    return d, torch.maximum(da, db).view(-1, 1, 1)


def positive_pairs(
    method: Method | str,
    box_a: torch.Tensor,
    box_b: torch.Tensor,
    height: int,
    width: int,
    config: PretrainConfig,
    features_a: torch.Tensor | None = None,
    features_b: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, HW, HW) booleans: which pixel of view a pairs with which pixel of view b.

    PixPro: centres closer than ``pos_ratio`` larger bin diagonals. DS2: centres closer than ``delta``
    (normalised image coordinates) OR, for each pixel of a, its most similar pixel of b by cosine in
    the backbone features ``features_a`` / ``features_b`` (N, C, H, W)."""
    d, diag = centre_distances(box_a, box_b, height, width)
    if Method(method) is Method.pixpro:
        return d / diag < config.pos_ratio
    if features_a is None or features_b is None:
        raise StratadError("DS2's positive pairs need both views' backbone features")
    near = d < config.delta
    with torch.no_grad():
        fa = F.normalize(features_a.flatten(2), dim=1)
        fb = F.normalize(features_b.flatten(2), dim=1)
        best = torch.bmm(fa.transpose(1, 2), fb).argmax(dim=2)
    similar = torch.zeros_like(near)
    similar.scatter_(2, best[:, :, None].cpu(), True)
    return near | similar


def pair_loss(online: torch.Tensor, target: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """``-2 * mean cos`` over the positive pairs of each image (images without one count 0)."""
    n, c = online.shape[:2]
    logit = torch.bmm(online.view(n, c, -1).transpose(1, 2), target.view(n, c, -1))
    per_image = (logit * positive).sum(dim=(1, 2)) / (positive.sum(dim=(1, 2)) + 1e-6)
    return -2 * per_image.mean()


@dataclass
class PretrainResult:
    state: dict[str, torch.Tensor]
    #: mean loss and positive pairs per image, per epoch
    losses: list[float] = field(default_factory=list)
    positives: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)


class DenseModel(nn.Module):
    """The encoder (backbone graph to the scale nodes), one projector per scale, the shared PPM."""

    def __init__(
        self, backbone: Backbone, nodes: Sequence[str], channels: Sequence[int], config: PretrainConfig
    ) -> None:
        super().__init__()
        from stratad.backbones.nodes import build_graph_module

        self.nodes = list(nodes)
        self.encoder = build_graph_module(backbone, self.nodes, None)
        self.projectors = nn.ModuleList(Projector(c, config.inner_dim, config.out_dim) for c in channels)
        self.propagation = Propagation(config.out_dim, config.gamma)

    def train(self, mode: bool = True) -> DenseModel:
        super().train(mode)
        self.encoder.eval()  # the backbone's BatchNorm keeps its running statistics (module docstring)
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.encoder(x)
        return [out[n] for n in self.nodes]


def scale_nodes(backbone: Backbone, method: Method | str) -> list[str]:
    """The stage ends PixPro (the last) or DS2 (the last two) learns on."""
    from stratad.backbones import resolve_nodes

    stages = list(backbone.stages[-2:] if Method(method) is Method.ds2 else backbone.stages[-1:])
    return resolve_nodes(backbone, stages)


def pretrain(
    backbone: Backbone,
    images: torch.Tensor,
    config: PretrainConfig,
    device: str = "cpu",
    progress: Callable[[int, int, float, float, float], None] | None = None,
    resume: Path | None = None,
) -> PretrainResult:
    """Pretrain ``backbone`` (in place) on uint8 images (N, 3, H, W); see the module docstring.
    ``progress(epoch, epochs, loss, positive pairs per image, images per second)``; ``resume``: a
    file rewritten after every epoch, from which a killed run continues."""
    from stratad.backbones import list_nodes

    c = config
    method = Method(c.method)
    if len(images) < 2:
        raise StratadError("pretraining needs at least 2 images")
    dev = torch.device(device)
    nodes = scale_nodes(backbone, method)
    infos = {i.name: i for i in list_nodes(backbone, image_size=c.image_size)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed)
        online = DenseModel(backbone, nodes, [infos[n].channels for n in nodes], c).to(dev)
    target = copy.deepcopy(online).requires_grad_(False)
    mean = torch.tensor(backbone.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std, device=dev).view(1, 3, 1, 1)
    for p in online.parameters():
        p.requires_grad_(True)
    params = list(online.parameters())
    optimiser = torch.optim.SGD(params, lr=c.lr, momentum=0.9, weight_decay=c.weight_decay)
    # batches that run: a last batch of one image is skipped (BatchNorm needs two)
    steps_per_epoch = len(images) // c.batch_size + (1 if len(images) % c.batch_size >= 2 else 0)
    total_steps = steps_per_epoch * c.epochs
    generator = torch.Generator().manual_seed(c.seed)
    result = PretrainResult(state={})
    start = 0
    stamp = {
        "config": {k: getattr(v, "value", v) for k, v in c.__dict__.items()},
        "images_sha256": tensors_digest({"images": images}),
        "backbone": backbone.name,
        "weights": backbone.weights,
    }
    saved = read_resume(resume, stamp, "a pretraining")
    if saved is not None:
        online.load_state_dict(saved["online"])
        target.load_state_dict(saved["target"])
        optimiser.load_state_dict(saved["optimiser"])
        generator.set_state(saved["generator"])
        result.losses, result.positives, result.epoch_seconds = (
            saved["losses"],
            saved["positives"],
            saved["seconds"],
        )
        start = int(saved["epoch"])
    online.train()
    target.train()
    step = start * steps_per_epoch
    for epoch in range(start, c.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(images), generator=generator)
        losses, positives = [], []
        for s in range(0, len(images), c.batch_size):
            rows = order[s : s + c.batch_size]
            if len(rows) < 2:  # BatchNorm needs two images
                continue
            lr = c.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            for group in optimiser.param_groups:
                group["lr"] = lr
            views = [
                [random_view(images[int(i)].float() / 255.0, c.image_size, generator) for i in rows]
                for _ in range(2)
            ]
            x = [((torch.stack([v.image for v in vs]).to(dev)) - mean) / std for vs in views]
            boxes = [torch.stack([v.box for v in vs]).double() for vs in views]
            with torch.enable_grad():
                loss, pairs = _step_loss(online, target, x, boxes, method, c)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            momentum_update(online, target, momentum_at(step, total_steps, c.momentum))
            step += 1
            losses.append(float(loss.detach()))
            positives.append(pairs)
        seconds = time.perf_counter() - t0
        result.losses.append(float(np.mean(losses)))
        result.positives.append(float(np.mean(positives)))
        result.epoch_seconds.append(seconds)
        if resume is not None:
            payload = {
                "stamp": stamp,
                "epoch": epoch + 1,
                "online": online.state_dict(),
                "target": target.state_dict(),
                "optimiser": optimiser.state_dict(),
                "generator": generator.get_state(),
                "losses": result.losses,
                "positives": result.positives,
                "seconds": result.epoch_seconds,
            }
            write_resume(resume, payload)
        if progress is not None:
            progress(
                epoch + 1, c.epochs, result.losses[-1], result.positives[-1], len(images) / max(seconds, 1e-9)
            )
    backbone.model.eval()
    result.state = {
        k: v.detach().to("cpu", copy=True).contiguous() for k, v in backbone.model.state_dict().items()
    }
    return result


def _step_loss(
    online: DenseModel,
    target: DenseModel,
    x: list[torch.Tensor],
    boxes: list[torch.Tensor],
    method: Method,
    c: PretrainConfig,
) -> tuple[torch.Tensor, float]:
    """The symmetrised loss of one batch of view pairs, and the mean positive pairs per image."""
    feats = [online.features(v) for v in x]
    with torch.no_grad():
        target_feats = [target.features(v) for v in x]
        keys = [
            [F.normalize(p(f), dim=1) for p, f in zip(target.projectors, fs, strict=True)]
            for fs in target_feats
        ]
    total = torch.zeros((), device=x[0].device)
    pair_count = 0.0
    for scale in range(len(online.nodes)):
        for a, b in ((0, 1), (1, 0)):
            query = F.normalize(online.propagation(online.projectors[scale](feats[a][scale])), dim=1)
            n, _, h, w = query.shape
            positive = positive_pairs(
                method, boxes[a], boxes[b], h, w, c, target_feats[a][scale], target_feats[b][scale]
            )
            positive = positive.to(query.dtype).to(query.device)
            total = total + pair_loss(query, keys[b][scale], positive)
            pair_count += float(positive.sum() / n)
    terms = 2 * len(online.nodes)
    return total / len(online.nodes), pair_count / terms


def momentum_at(step: int, total_steps: int, base: float) -> float:
    """The momentum encoder's momentum at ``step``: ``base`` at the start, 1 at the end, along a cosine."""
    return 1 - (1 - base) * (math.cos(math.pi * step / total_steps) + 1) / 2


def momentum_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """EMA step: every target parameter becomes ``momentum * target + (1 - momentum) * online``;
    buffers (BatchNorm statistics) are copied."""
    with torch.no_grad():
        for p, q in zip(online.parameters(), target.parameters(), strict=True):
            q.mul_(momentum).add_(p.detach(), alpha=1 - momentum)
        for b, t in zip(online.buffers(), target.buffers(), strict=True):
            t.copy_(b)
