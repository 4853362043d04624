"""PANDA (Reiss, Cohen, Bergman, Hoshen, CVPR 2021; official code talreiss/PANDA): fine-tune the last
stages of a pretrained backbone on the normal images so their pooled features gather, without the
feature collapse that plain fine-tuning brings; the result is a backbone every detector can use.

As in the official code:
- the features are the backbone's pooled output ``psi(x)``; the compactness loss is
  ``mean_x ||psi(x) - c||^2 / D`` with ``c`` the mean pooled feature of the training images under the
  INITIAL (pretrained) weights;
- only the last two stages train (ResNet: layer3, layer4; EfficientNet-Lite: blocks.5, blocks.6 and
  the head convolution before the pooling); the classifier never trains; BatchNorm keeps its running
  statistics (the network stays in eval mode);
- SGD, lr 1e-2, momentum 0.9, weight decay 5e-5, gradient-norm clipping 1e-3, batches of 32,
  15 epochs;
- scoring is kNN (k = 2, the sum of squared distances) on the adapted pooled features
  (:func:`knn_scores`, what the benchmark reports); stratad's ``dn2`` detector with ``--weights`` the
  adapted file scores the mean Euclidean distance to the 2 nearest instead, which may rank images
  slightly differently.

Against collapse (``variant``):
- ``early``: train a fixed number of epochs (the official code's 15) and stop;
- ``ses`` (sample-wise early stopping): a checkpoint after every ``ses_every`` epochs; a test image's
  score under a checkpoint is divided by that checkpoint's mean kNN score of 10 % of the training
  images held out from a 90/10 split, and the final score is the maximum over checkpoints
  (:func:`ses_scores`);
- ``ewc``: elastic weight consolidation, ``lambda / 2 * sum_i F_i (theta_i - theta0_i)^2`` with
  lambda 1e4 and ``F`` the diagonal Fisher information of the pretraining classifier. No ImageNet
  data exists on these machines: ``F`` is computed from the classifier's own predictive distribution
  (one label sampled from its softmax per image) on the training images and the colour images that
  ship inside scikit-image (or a folder the user gives);
- ``none``: no protection (the collapse demonstration; with the same epochs it trains exactly as
  ``early``, whose protection is only the fixed small number of epochs).

Outlier exposure (``outliers``): a logistic head on the pooled features trained with the backbone's
last stages to tell normal images (0) from outliers (1), binary cross-entropy, SGD lr 1e-2 momentum
0.9 without weight decay, clipping 1e-3 (official ``outlier_exposure.py``); the outliers are the
images of a folder, or synthetic defects (stratad's ``synth``) made on the training images. The
official outlier-exposure script trains 75 epochs; stratad's default stays 15 (``-p epochs=75``).
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stratad._options import bounded
from stratad.backbones.registry import Backbone
from stratad.errors import StratadError
from stratad.export.io import read_resume, tensors_digest, write_resume

#: classifier modules that never train and carry no EWC penalty
CLASSIFIER_NAMES = ("classifier", "fc", "head")


class Variant(str, enum.Enum):
    early = "early"
    ses = "ses"
    ewc = "ewc"
    none = "none"


@dataclass
class AdaptConfig:
    variant: Variant = Variant.early
    #: passes over the training images (official: 15)
    epochs: int = bounded(15, low=1)
    batch_size: int = bounded(32, low=1)
    lr: float = bounded(1e-2, low=0, low_open=True)
    momentum: float = bounded(0.9, low=0)
    weight_decay: float = bounded(5e-5, low=0)
    #: gradient-norm clipping (official: 1e-3)
    clip: float = bounded(1e-3, low=0, low_open=True)
    #: EWC's lambda (official: 1e4)
    ewc_lambda: float = bounded(1e4, low=0)
    #: SES: a checkpoint after every this many epochs
    ses_every: int = bounded(1, low=1)
    #: SES: share of the training images held out to normalise each checkpoint's scores
    ses_holdout: float = bounded(0.1, low=0, high=0.5, low_open=True)
    #: outlier exposure: train a logistic head against outliers instead of the compactness loss
    outlier_exposure: bool = False
    #: stages from the end that train (official: 2)
    trainable_stages: int = bounded(2, low=1)
    seed: int = 0


@dataclass
class AdaptResult:
    """The adapted weights (the whole model's state dict, loadable with ``--weights``) and the log."""

    state: dict[str, torch.Tensor]
    #: mean training loss per epoch
    losses: list[float] = field(default_factory=list)
    #: mean pairwise distance of the training images' pooled features after each epoch (0 = the
    #: features have collapsed onto one point); index 0 is before training
    spread: list[float] = field(default_factory=list)
    #: SES: (epoch, state dict) of every checkpoint
    checkpoints: list[tuple[int, dict[str, torch.Tensor]]] = field(default_factory=list)
    seconds: float = 0.0


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    return tuple(f"{name}." for name in CLASSIFIER_NAMES if isinstance(getattr(model, name, None), nn.Module))


def trainable_names(backbone: Backbone, stages: int = 2) -> list[str]:
    """Parameter names that adapt: from the first of the last ``stages`` stages to the pooling,
    without the classifier (in the model's parameter order)."""
    if len(backbone.stages) < stages:
        raise StratadError(
            f"{backbone.name} names {len(backbone.stages)} stages; cannot train the last {stages}"
        )
    first = backbone.stages[-stages] + "."
    names = [n for n, _ in backbone.model.named_parameters()]
    start = next((i for i, n in enumerate(names) if n.startswith(first)), None)
    if start is None:
        raise StratadError(f"{backbone.name}: no parameter inside stage {backbone.stages[-stages]!r}")
    skip = classifier_prefixes(backbone.model)
    return [n for n in names[start:] if not n.startswith(skip)]


class PooledFeatures(nn.Module):
    """Images in [0, 1] -> the backbone's pooled features (N, D), differentiable, BatchNorm frozen."""

    def __init__(self, backbone: Backbone, device: torch.device) -> None:
        super().__init__()
        from stratad.backbones import NodeExtractor

        if not backbone.pooled:
            raise StratadError(f"{backbone.name} names no pooled output; PANDA adapts pooled features")
        self.extractor = NodeExtractor(backbone, [backbone.pooled], device=device, channels_last=False)
        self.node = self.extractor.nodes[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.extractor.forward_normalised(self.extractor.normalise(images))[self.node]
        return out.flatten(1)


def _batches(n: int, size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return [order[s : s + size] for s in range(0, n, size)]


def pooled(model: PooledFeatures, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """(N, D) pooled features of uint8 images, without gradients, on the CPU."""
    with torch.no_grad():
        parts = [model(images[b].float() / 255.0).cpu() for b in _batches(len(images), batch_size, None)]
    return torch.cat(parts)


def mean_pairwise_distance(features: torch.Tensor) -> float:
    """The collapse indicator: the mean Euclidean distance between distinct training features."""
    n = int(features.shape[0])
    if n < 2:
        return 0.0
    d = torch.cdist(features.double(), features.double())
    return float(d.sum() / (n * (n - 1)))


def compactness_loss(features: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """``mean_x ||psi(x) - c||^2 / D`` (official ``CompactnessLoss``)."""
    return ((features - center).norm(dim=1).square() / features.shape[1]).mean()


class EWCPenalty(nn.Module):
    """``lambda / 2 * sum_i F_i (theta_i - theta0_i)^2`` over the adapting parameters."""

    def __init__(
        self, model: nn.Module, names: Sequence[str], fisher: dict[str, torch.Tensor], lam: float
    ) -> None:
        super().__init__()
        params = dict(model.named_parameters())
        self.names = list(names)
        self.params = [params[n] for n in self.names]
        self.initial = [params[n].detach().clone() for n in self.names]
        self.fisher = [fisher[n].to(params[n].device) for n in self.names]
        self.lam = float(lam)

    def forward(self) -> torch.Tensor:
        total = torch.zeros((), device=self.params[0].device)
        for p, p0, f in zip(self.params, self.initial, self.fisher, strict=True):
            total = total + (f * (p - p0).square()).sum() / 2
        return self.lam * total


#: photographs that ship inside scikit-image (its texture images brick / grass / gravel are left
#: out: stratad's demo data is made of them)
SKIMAGE_PHOTOS = (
    "astronaut.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
    "coins.png", "hubble_deep_field.jpg", "ihc.png", "microaneurysms.png", "moon.png",
    "motorcycle_left.png", "retina.jpg", "rocket.jpg",
)  # fmt: skip


def generic_images(image_size: int, folder: Path | None = None) -> torch.Tensor:
    """Generic natural images, uint8 (M, 3, S, S): the photographs that ship inside scikit-image
    (read from its package folder, never downloaded; :data:`SKIMAGE_PHOTOS`), or every image of
    ``folder``."""
    from stratad.data.datasets import list_images
    from stratad.data.io import read_image_resized

    if folder is not None:
        paths = list_images(folder)
        if not paths:
            raise StratadError(f"{folder} holds no image")
    else:
        import skimage

        root = Path(skimage.__file__).parent / "data"
        paths = [root / name for name in SKIMAGE_PHOTOS if (root / name).is_file()]
        if not paths:
            raise StratadError(f"no scikit-image photograph found in {root}; pass a folder of images")
    images = [
        torch.from_numpy(np.array(read_image_resized(path, image_size))).permute(2, 0, 1) for path in paths
    ]
    return torch.stack(images)


def fisher_diagonal(
    backbone: Backbone, names: Sequence[str], images: torch.Tensor, seed: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """The diagonal Fisher information of the pretraining classifier for the parameters ``names``:
    per image, one label drawn from the classifier's softmax, the squared gradient of its log
    probability, averaged over images (uint8 ``images``)."""
    model = backbone.model
    params = dict(model.named_parameters())
    fisher = {n: torch.zeros_like(params[n]) for n in names}
    mean = torch.tensor(backbone.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std, device=device).view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    with torch.enable_grad():
        for i in range(len(images)):
            x = (images[i : i + 1].float().to(device) / 255.0 - mean) / std
            log_p = torch.log_softmax(model(x), dim=1)
            label = torch.multinomial(log_p.detach().exp().cpu()[0], 1, generator=generator)
            grads = torch.autograd.grad(log_p[0, int(label)], [params[n] for n in names], allow_unused=True)
            for n, g in zip(names, grads, strict=True):
                if g is not None:
                    fisher[n] += g.detach().square()
    return {n: f / len(images) for n, f in fisher.items()}


def adapt(
    backbone: Backbone,
    train: torch.Tensor,
    config: AdaptConfig,
    outliers: torch.Tensor | None = None,
    fisher_images: torch.Tensor | None = None,
    device: str = "cpu",
    progress: Callable[[int, int, float, float, float], None] | None = None,
    resume: Path | None = None,
) -> AdaptResult:
    """Adapt ``backbone`` (in place) on uint8 training images ``train`` (N, 3, S, S); see the module
    docstring. ``outliers``: uint8 images for outlier exposure. ``fisher_images``: generic images
    for EWC's Fisher information besides the training images. ``progress(epoch, epochs, loss,
    spread, seconds)`` after every epoch. ``resume``: a file rewritten after every epoch with all
    the training state; a run that finds it continues from its last epoch (one with other settings
    or data is refused)."""
    c = config
    variant = Variant(c.variant)
    dev = torch.device(device)
    if len(train) < 2:
        raise StratadError("PANDA needs at least 2 training images")
    if c.outlier_exposure and (outliers is None or len(outliers) == 0):
        raise StratadError("outlier exposure needs outlier images (a folder, or synthetic defects)")
    if c.outlier_exposure and variant is not Variant.early:
        raise StratadError(
            f"outlier exposure trains a fixed number of epochs; --variant {variant.value} is for the "
            "compactness loss"
        )
    if variant is Variant.ewc and (
        "random" in backbone.weights or "kept from initialisation" in backbone.weights
    ):
        raise StratadError(
            f"EWC needs the pretraining classifier, but {backbone.name}'s classifier is not pretrained "
            f"({backbone.weights}); use --variant early or ses"
        )
    model = backbone.model
    names = trainable_names(backbone, c.trainable_stages)
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)
    features = PooledFeatures(backbone, dev)
    t0 = time.perf_counter()
    initial = pooled(features, train)
    center = initial.mean(dim=0).to(dev)
    result = AdaptResult(state={}, spread=[mean_pairwise_distance(initial)])
    params = [p for n, p in model.named_parameters() if n in names]
    head: nn.Linear | None = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed)
        if c.outlier_exposure:
            head = nn.Linear(int(initial.shape[1]), 1).to(dev)
    if head is not None:
        optimiser = torch.optim.SGD([*params, *head.parameters()], lr=c.lr, momentum=c.momentum)
    else:
        optimiser = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    penalty = None
    if variant is Variant.ewc and head is None:
        pool = train if fisher_images is None else torch.cat([train, fisher_images])
        penalty = EWCPenalty(model, names, fisher_diagonal(backbone, names, pool, c.seed, dev), c.ewc_lambda)
    generator = torch.Generator().manual_seed(c.seed)
    outlier_generator = torch.Generator().manual_seed(c.seed + 1)
    clipped = [*params, *(head.parameters() if head is not None else [])]
    stamp = _stamp(backbone, c, train, outliers)
    start = 0
    saved = read_resume(resume, stamp, "an adaptation")
    if saved is not None:
        model.load_state_dict(saved["model"], strict=False)
        if head is not None:
            head.load_state_dict(saved["head"])
        optimiser.load_state_dict(saved["optimiser"])
        generator.set_state(saved["generator"])
        outlier_generator.set_state(saved["outlier_generator"])
        result.losses, result.spread, result.checkpoints = (
            saved["losses"],
            saved["spread"],
            saved["checkpoints"],
        )
        start = int(saved["epoch"])
    with torch.enable_grad():
        for epoch in range(start, c.epochs):
            losses = []
            for rows in _batches(len(train), c.batch_size, generator):
                psi = features(train[rows].float().to(dev) / 255.0)
                if head is not None:
                    assert outliers is not None
                    pick = torch.randint(len(outliers), (len(rows),), generator=outlier_generator)
                    psi_out = features(outliers[pick].float().to(dev) / 255.0)
                    logits = head(torch.cat([psi, psi_out]))[:, 0]
                    labels = torch.cat([torch.zeros(len(psi)), torch.ones(len(psi_out))]).to(dev)
                    loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
                else:
                    loss = compactness_loss(psi, center)
                    if penalty is not None:
                        loss = loss + penalty()
                optimiser.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(clipped, c.clip)
                optimiser.step()
                losses.append(float(loss.detach()))
            result.losses.append(float(np.mean(losses)))
            result.spread.append(mean_pairwise_distance(pooled(features, train)))
            if variant is Variant.ses and (epoch + 1) % c.ses_every == 0:  # the adapting tensors
                result.checkpoints.append(
                    (epoch + 1, {n: t for n, t in _cpu_state(model).items() if n in names})
                )
            if resume is not None:
                trained = {n: p.detach().cpu() for n, p in model.named_parameters() if n in names}
                write_resume(
                    resume,
                    {
                        "stamp": stamp,
                        "epoch": epoch + 1,
                        "model": trained,
                        "head": None if head is None else head.state_dict(),
                        "optimiser": optimiser.state_dict(),
                        "generator": generator.get_state(),
                        "outlier_generator": outlier_generator.get_state(),
                        "losses": result.losses,
                        "spread": result.spread,
                        "checkpoints": result.checkpoints,
                    },
                )
            if progress is not None:
                progress(epoch + 1, c.epochs, result.losses[-1], result.spread[-1], time.perf_counter() - t0)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    result.state = _cpu_state(model)
    result.seconds = time.perf_counter() - t0
    return result


def _stamp(
    backbone: Backbone, config: AdaptConfig, train: torch.Tensor, outliers: torch.Tensor | None
) -> dict[str, Any]:
    """What a resumed run must share with the one that wrote the resume file."""
    import dataclasses

    def digest(images: torch.Tensor | None) -> str | None:
        return None if images is None else tensors_digest({"images": images})

    settings = {
        k: (v.value if isinstance(v, enum.Enum) else v) for k, v in dataclasses.asdict(config).items()
    }
    return {
        "backbone": backbone.name, "weights": backbone.weights, "config": settings,
        "train": digest(train), "outliers": digest(outliers),
    }  # fmt: skip


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def load_ses_checkpoints(path: Path) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """The checkpoints ``stratad adapt --variant ses`` wrote (``<out stem>.ses.safetensors``), in
    epoch order, ready for :func:`ses_scores`."""
    from safetensors.torch import load_file

    by_epoch: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(path)).items():
        head, _, name = key.partition(".")
        if not head.startswith("epoch") or not head[5:].isdigit() or not name:
            raise StratadError(f"{path} is not a file of SES checkpoints (key {key!r})")
        by_epoch.setdefault(int(head[5:]), {})[name] = tensor
    return sorted(by_epoch.items())


def knn_scores(train: torch.Tensor, test: torch.Tensor, k: int = 2) -> torch.Tensor:
    """PANDA's kNN score: the sum of the squared distances to the ``k`` nearest training features."""
    d = torch.cdist(test.double(), train.double()).square()
    return d.topk(min(k, int(train.shape[0])), dim=1, largest=False).values.sum(dim=1).float()


def ses_scores(
    backbone: Backbone,
    checkpoints: Sequence[tuple[int, dict[str, Any]]],
    train: torch.Tensor,
    test: torch.Tensor,
    holdout: float = 0.1,
    seed: int = 0,
    device: str = "cpu",
) -> np.ndarray:
    """Sample-wise early stopping: per checkpoint, kNN scores of ``test`` against 90 % of the
    training images, divided by the mean score of the held-out 10 %; the maximum over checkpoints."""
    if not checkpoints:
        raise StratadError("SES needs at least one checkpoint")
    n = len(train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held = max(1, math.ceil(holdout * n))
    if held >= n:
        raise StratadError(f"{n} training images are too few for a {holdout:.0%} hold-out")
    fit_rows, held_rows = order[held:], order[:held]
    features = PooledFeatures(backbone, torch.device(device))
    best = None
    for epoch, state in checkpoints:  # the adapting tensors of each checkpoint
        unexpected = backbone.model.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise StratadError(f"SES checkpoint {epoch} has tensors {backbone.name} lacks: {unexpected[0]}")
        bank = pooled(features, train[fit_rows])
        norm = float(knn_scores(bank, pooled(features, train[held_rows])).mean())
        scores = knn_scores(bank, pooled(features, test)) / max(norm, 1e-12)
        best = scores if best is None else torch.maximum(best, scores)
    assert best is not None
    return best.numpy()
