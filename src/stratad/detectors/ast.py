"""Asymmetric Student-Teacher, AST (Rudolph, Wehrbein, Rosenhahn, Wandt, WACV 2023; official code
marco-rudolph/AST), trained on frozen node features, RGB variant (no depth).

As in the official code (``config.py``, ``model.py``, ``freia_funcs.py``):
- the teacher is a conditional normalizing flow on the feature map: ``coupling_blocks`` (4) steps,
  each a fixed random channel permutation then a GLOW coupling block (both halves transformed) whose
  subnets see the 2D sine/cosine positional encoding (``pos_dim`` 32 channels) beside their half;
  a subnet is conv(k) -> ReLU -> conv(k) with replicate padding and ``teacher_hidden`` (64) hidden
  channels, its output scaled by a learned factor that starts at 0 (the flow starts as the
  identity); kernels 3, 3, 3, 5; scale clamping ``clamp * 0.636 * atan(s / clamp)``, clamp 1.9.
  The flow is FrEIA's (``SequenceINN``, ``PermuteRandom``, ``GLOWCouplingBlock``), the maintained
  library, not hand-written coupling layers;
- the teacher is trained first, by maximum likelihood: loss ``(0.5 ||z||^2 - log|det J|) / (H W)``
  per image;
- the student is a conventional network on the same input (features and positional encoding):
  conv 3x3 to ``student_hidden`` (1024) channels, LeakyReLU, ``student_blocks`` (4) residual blocks
  (conv-BN-LeakyReLU twice, plus the input), conv 3x3 back to the feature channels; it is trained to
  regress the teacher's output ``z``: loss ``mean (z_teacher - z_student)^2``;
- Adam, lr 2e-4, weight decay 1e-5, batches of 8 images, for both networks;
- the anomaly map is the student-teacher distance ``mean_c (z_teacher - z_student)^2``, the image
  score its maximum (the official evaluation reports the maximum and the mean; ``image_score``).
  ``likelihood_weight`` > 0 adds that multiple of the teacher's ``0.5 mean_c z^2`` to the map (off,
  as in the official evaluation).

Several nodes are resized to the first node's grid and joined along channels. Epochs: the official
MVTec AD setting trains 72 (3 x 24 sub-epochs); the feature-extractor study trains 40 sub-epochs,
stratad's default for each network. The student dominates the cost: with 1024 hidden channels it
is ~75 M weights of 3 x 3 convolutions at every map position, so on a CPU use ``student_hidden`` and
``epochs`` to set a smaller, documented budget (README). Same seed, same weights (CPU).
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stratad._options import bounded
from stratad.backbones.stages import NodeRule
from stratad.detectors.base import Detector, DetectorConfig, Scores, register_detector, state_tensor
from stratad.errors import DetectorError
from stratad.features.patch import spatial
from stratad.features.types import FeatureBatch

#: images scored together (bounds the networks' activations)
SCORE_CHUNK = 16


class ImageScore(str, enum.Enum):
    """The image score from the map."""

    max = "max"
    mean = "mean"


@dataclass
class ASTConfig(DetectorConfig):
    #: the teacher's coupling blocks (official: 4)
    coupling_blocks: int = bounded(4, low=1)
    #: hidden channels of the teacher's subnets (official: 64)
    teacher_hidden: int = bounded(64, low=1)
    #: the affine coupling's clamp (official: 1.9)
    clamp: float = bounded(1.9, low=0, low_open=True)
    #: channels of the positional encoding, a multiple of 4 (official: 32); 0 turns it off
    pos_dim: int = bounded(32, low=0)
    #: hidden channels of the student (official: 1024)
    student_hidden: int = bounded(1024, low=1)
    #: residual blocks of the student (official: 4)
    student_blocks: int = bounded(4, low=0)
    #: passes over the training images, for the teacher and then for the student (the extractor
    #: study: 40 sub-epochs)
    epochs: int = bounded(40, low=1)
    #: training images per step (official: 8)
    batch_size: int = bounded(8, low=1)
    lr: float = bounded(2e-4, low=0, low_open=True)
    weight_decay: float = bounded(1e-5, low=0)
    #: the image score from the map: its maximum or its mean
    image_score: ImageScore = ImageScore.max
    #: weight of the teacher's ``0.5 mean_c z^2`` added to the student-teacher map (official: 0)
    likelihood_weight: float = bounded(0.0, low=0)
    seed: int = 0


def positional_encoding(channels: int, height: int, width: int) -> torch.Tensor:
    """(channels, H, W) 2D sine/cosine encoding: the first half of the channels encodes the column
    (sin, cos alternating over frequencies ``10000^(-2i / (channels / 2))``), the second half the row
    (the encoding of CFlow-AD that AST uses)."""
    if channels % 4:
        raise DetectorError(
            f"AST's positional encoding needs a multiple of 4 channels, got pos_dim={channels}"
        )
    half = channels // 2
    frequencies = torch.exp(torch.arange(0.0, half, 2) * -(math.log(1e4) / half))  # (half / 2,)
    columns = torch.arange(float(width))[:, None] * frequencies  # (W, half / 2)
    rows = torch.arange(float(height))[:, None] * frequencies  # (H, half / 2)
    encoding = torch.zeros(channels, height, width)
    encoding[0:half:2] = torch.sin(columns).T[:, None, :].expand(-1, height, -1)
    encoding[1:half:2] = torch.cos(columns).T[:, None, :].expand(-1, height, -1)
    encoding[half::2] = torch.sin(rows).T[:, :, None].expand(-1, -1, width)
    encoding[half + 1 :: 2] = torch.cos(rows).T[:, :, None].expand(-1, -1, width)
    return encoding


class _ScaledSubnet(nn.Module):
    """conv(k) -> ReLU -> conv(k), replicate padding, output times a learned factor that starts at 0."""

    def __init__(self, channels_in: int, channels_out: int, hidden: int, kernel: int) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv2d(channels_in, hidden, kernel, padding=pad, padding_mode="replicate")
        self.conv2 = nn.Conv2d(hidden, channels_out, kernel, padding=pad, padding_mode="replicate")
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x))) * self.gamma


def _atan_clamp(u: torch.Tensor, clamp: float) -> torch.Tensor:
    """FrEIA multiplies this by ``clamp``: ``clamp * 0.636 * atan(u / clamp)``, the official clamp."""
    return 0.636 * torch.atan(u / clamp)


def build_teacher(shape: tuple[int, int, int], config: ASTConfig) -> nn.Module:
    """FrEIA's SequenceINN: per coupling block a random permutation and a conditional GLOW block."""
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    channels, height, width = shape
    flow = Ff.SequenceINN(channels, height, width)
    n = config.coupling_blocks
    for k in range(n):
        kernel = 5 if k == n - 1 else 3
        flow.append(Fm.PermuteRandom, seed=k)
        conditioned = {"cond": 0, "cond_shape": (config.pos_dim, height, width)} if config.pos_dim else {}
        flow.append(
            Fm.GLOWCouplingBlock,
            subnet_constructor=partial(_subnet, hidden=config.teacher_hidden, kernel=kernel),
            clamp=config.clamp,
            clamp_activation=partial(_atan_clamp, clamp=config.clamp),
            **conditioned,
        )
    return flow


def _subnet(channels_in: int, channels_out: int, hidden: int, kernel: int) -> nn.Module:
    return _ScaledSubnet(channels_in, channels_out, hidden, kernel)


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)))
        out = F.leaky_relu(self.bn2(self.conv2(out)))
        return out + x


class Student(nn.Module):
    """conv 3x3 -> LeakyReLU -> residual blocks -> conv 3x3 (official ``Student``)."""

    def __init__(self, channels: int, config: ASTConfig) -> None:
        super().__init__()
        hidden = config.student_hidden
        self.conv1 = nn.Conv2d(channels + config.pos_dim, hidden, 3, padding=1)
        self.blocks = nn.Sequential(*(_ResBlock(hidden) for _ in range(config.student_blocks)))
        self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.blocks(F.leaky_relu(self.conv1(x))))


class ASTNetworks(nn.Module):
    """The teacher, the student and the positional encoding (a buffer) for one (C, H, W) input."""

    pos: torch.Tensor

    def __init__(self, shape: tuple[int, int, int], config: ASTConfig) -> None:
        super().__init__()
        channels, height, width = shape
        self.teacher = build_teacher(shape, config)
        self.student = Student(channels, config)
        pos = (
            positional_encoding(config.pos_dim, height, width)
            if config.pos_dim
            else torch.zeros(0, height, width)
        )
        self.register_buffer("pos", pos)
        self.likelihood_weight = float(config.likelihood_weight)

    def condition(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos.to(x.dtype).expand(x.shape[0], -1, -1, -1)

    def teach(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's ``(z, log|det J|)``."""
        if self.pos.shape[0]:
            z, log_jac = self.teacher(x, c=[self.condition(x)])
        else:
            z, log_jac = self.teacher(x)
        return z, log_jac

    def learn(self, x: torch.Tensor) -> torch.Tensor:
        """The student's estimate of the teacher's ``z``."""
        return self.student(torch.cat([self.condition(x), x], dim=1) if self.pos.shape[0] else x)

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H, W): ``mean_c (z_teacher - z_student)^2`` (+ the weighted teacher likelihood term)."""
        z, _ = self.teach(x)
        out = (z - self.learn(x)).square().mean(dim=1)
        if self.likelihood_weight:
            out = out + self.likelihood_weight * 0.5 * z.square().mean(dim=1)
        return out


def join_nodes(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """The nodes' maps resized (bilinear) to the first node's grid and joined along channels."""
    grid = tuple(int(s) for s in features[0].shape[-2:])
    parts = [
        x
        if tuple(x.shape[-2:]) == grid
        else F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
        for x in features
    ]
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def seeded_networks(shape: tuple[int, int, int], config: ASTConfig) -> ASTNetworks:
    """The networks initialised from ``config.seed``, the caller's torch and NumPy generators
    untouched (FrEIA's ``PermuteRandom`` seeds NumPy's global generator)."""
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return ASTNetworks(shape, config)
    finally:
        np.random.set_state(numpy_state)


def ast_scores(
    networks: ASTNetworks, x: torch.Tensor, image_score: ImageScore | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image scores (N,) and maps (N, H, W) of joined node features ``x``."""
    maps = networks.maps(x)
    flat = maps.flatten(1)
    return (flat.amax(dim=1) if ImageScore(image_score) is ImageScore.max else flat.mean(dim=1)), maps


@register_detector
class AST(Detector):
    name = "ast"
    config_class = ASTConfig
    localizes = True
    # One node as in the paper (EfficientNet-B5 at stride 32 of 768 px, a 24 x 24 map); at stratad's
    # 256 px the stage end at stride 16 gives a comparable 16 x 16 map.
    default_nodes = NodeRule(last_at=(16,))
    progress_unit = "epoch"

    config: ASTConfig

    def __init__(self, config: ASTConfig | None = None, **params: object) -> None:
        super().__init__(config, **params)
        self.networks_: ASTNetworks | None = None
        #: mean training loss per epoch: the teacher's epochs, then the student's
        self.losses_: list[float] = []
        #: called after every epoch with (epoch, epochs of both networks, loss, seconds so far)
        self.progress: Callable[[int, int, float, float], None] | None = None
        #: the device training runs on (the pipeline's); the fitted networks come back to the CPU
        self.train_device = "cpu"

    def validate_config(self) -> None:
        if self.config.pos_dim % 4:
            raise DetectorError(
                f"AST's positional encoding needs a multiple of 4 channels, got pos_dim={self.config.pos_dim}"
            )

    def _input(self, batch: FeatureBatch) -> torch.Tensor:
        return join_nodes([spatial(node, x).float() for node, x in batch.items()])

    def fit(self, train: FeatureBatch) -> AST:
        if len(train) == 0:
            raise DetectorError("AST needs at least one training image")
        c = self.config
        x = self._input(train)
        if int(x.shape[1]) < 2:
            raise DetectorError("AST's coupling blocks need at least 2 channels; the nodes give 1")
        device = torch.device(self.train_device)
        networks = seeded_networks(tuple(int(s) for s in x.shape[1:]), c).to(device)  # type: ignore[arg-type]
        n, area = int(x.shape[0]), int(x.shape[2] * x.shape[3])
        generator = torch.Generator().manual_seed(c.seed)
        self.losses_ = []
        t0 = time.perf_counter()
        total = 2 * c.epochs

        def run(
            parameters: list[nn.Parameter], loss_of: Callable[[torch.Tensor], torch.Tensor], done: int
        ) -> None:
            optimiser = torch.optim.Adam(parameters, lr=c.lr, weight_decay=c.weight_decay)
            for epoch in range(c.epochs):
                order = torch.randperm(n, generator=generator)
                losses = []
                for start in range(0, n, c.batch_size):
                    rows = order[start : start + c.batch_size]
                    if len(rows) < 2 and n >= 2:  # the student's BatchNorm needs two (official: drop_last)
                        continue
                    loss = loss_of(x[rows].to(device))
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    losses.append(float(loss.detach()))
                self.losses_.append(float(np.mean(losses)))
                if self.progress is not None:
                    self.progress(done + epoch + 1, total, self.losses_[-1], time.perf_counter() - t0)

        def teacher_loss(batch: torch.Tensor) -> torch.Tensor:
            z, log_jac = networks.teach(batch)
            return ((0.5 * z.square().sum(dim=(1, 2, 3)) - log_jac) / area).mean()

        def student_loss(batch: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                target, _ = networks.teach(batch)
            return (target - networks.learn(batch)).square().mean()

        with torch.enable_grad():
            networks.train()
            run(list(networks.teacher.parameters()), teacher_loss, 0)
            networks.teacher.eval()  # (no batch statistics; the student's BatchNorm trains next)
            run(list(networks.student.parameters()), student_loss, c.epochs)
        self.networks_ = networks.cpu().eval().requires_grad_(False)
        return self

    def score(self, test: FeatureBatch) -> Scores:
        self._check_fitted("networks_")
        assert self.networks_ is not None
        x = self._input(test)
        expected = (
            int(self.networks_.student.conv2.out_channels),
            *(int(s) for s in self.networks_.pos.shape[1:]),
        )
        if tuple(int(s) for s in x.shape[1:]) != expected:
            raise DetectorError(
                f"AST was trained on a (C, H, W) input of {expected} but got {tuple(x.shape[1:])}: score "
                "with the nodes and image size it was trained with"
            )
        with torch.no_grad():  # in chunks of images: memory does not grow with the number scored
            parts = [
                ast_scores(self.networks_, x[s : s + SCORE_CHUNK], self.config.image_score)
                for s in range(0, max(int(x.shape[0]), 1), SCORE_CHUNK)
            ]
        scores = torch.cat([p[0] for p in parts]).numpy().astype(np.float32)
        maps = torch.cat([p[1] for p in parts]).numpy().astype(np.float32)
        return Scores(scores, maps)

    def module(self, nodes: Sequence[str]) -> nn.Module:
        from stratad.detectors.modules import ASTModule

        self._check_fitted("networks_")
        assert self.networks_ is not None
        return ASTModule(self, nodes, self.networks_, self.config.image_score)

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted("networks_")
        assert self.networks_ is not None
        return {k: v for k, v in self.networks_.state_dict().items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        out = state_tensor(state, "student.conv2.weight", 4, "AST")
        pos = state_tensor(state, "pos", 3, "AST")
        if int(pos.shape[0]) != self.config.pos_dim:
            raise DetectorError(
                f"AST state has a {int(pos.shape[0])}-channel positional encoding, "
                f"the config {self.config.pos_dim}"
            )
        shape = (int(out.shape[0]), int(pos.shape[1]), int(pos.shape[2]))
        networks = seeded_networks(shape, self.config)
        try:
            networks.load_state_dict(dict(state))
        except RuntimeError as exc:
            raise DetectorError(f"AST state does not fit its networks: {str(exc).splitlines()[0]}") from None
        self.networks_ = networks.eval().requires_grad_(False)
