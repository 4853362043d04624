"""FastFlow (Yu et al., "FastFlow: Unsupervised Anomaly Detection and Localization via 2D Normalizing
Flows", 2021), trained on frozen node features.

Per node: LayerNorm over (C, H, W) with learned affine, then a 2D normalizing flow of ``flow_steps``
(8) affine coupling blocks whose subnets alternate 3 x 3 and 1 x 1 convolutions (conv, ReLU, conv,
``hidden_ratio`` x C hidden channels), as in the paper and anomalib's implementation. The flow is
FrEIA's ``AllInOneBlock`` (affine clamping 2.0) in a ``SequenceINN``: a maintained normalizing-flow
library rather than hand-written coupling layers. Training maximises the likelihood, loss
``mean(0.5 ||z||^2 - log|det J|)`` summed over nodes, with Adam (lr 1e-3, weight decay 1e-5); the
extractor study trains a fixed ``steps`` = 200 optimisation steps with early stopping off. The map of a
node is ``-exp(-0.5 mean_c z^2)``, resized to the first node's grid and averaged over nodes; the
image score is the map's maximum. Same seed, same weights (CPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

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

#: images scored together (bounds the flows' activations)
SCORE_CHUNK = 16


@dataclass
class FastFlowConfig(DetectorConfig):
    #: coupling blocks per node
    flow_steps: int = bounded(8, low=1)
    #: subnet hidden channels as a multiple of the node's channels (anomalib: 1.0 for ResNets)
    hidden_ratio: float = bounded(1.0, low=0, low_open=True)
    #: every subnet 3 x 3 (instead of alternating 3 x 3 and 1 x 1)
    conv3x3_only: bool = False
    #: optimisation steps (the extractor study: 200, early stopping off)
    steps: int = bounded(200, low=1)
    #: training images per step (anomalib's default)
    batch_size: int = bounded(32, low=1)
    lr: float = bounded(1e-3, low=0, low_open=True)
    weight_decay: float = bounded(1e-5, low=0)
    seed: int = 0


def _subnet(kernel: int, hidden_ratio: float) -> Callable[[int, int], nn.Module]:
    def build(channels_in: int, channels_out: int) -> nn.Module:
        hidden = max(1, int(channels_in * hidden_ratio))
        return nn.Sequential(
            nn.Conv2d(channels_in, hidden, kernel, padding="same"),
            nn.ReLU(),
            nn.Conv2d(hidden, channels_out, kernel, padding="same"),
        )

    return build


def build_flow(shape: tuple[int, int, int], config: FastFlowConfig) -> nn.Module:
    """FrEIA's SequenceINN of ``flow_steps`` AllInOneBlocks for a (C, H, W) node."""
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    flow = Ff.SequenceINN(*shape)
    for i in range(config.flow_steps):
        kernel = 1 if i % 2 == 1 and not config.conv3x3_only else 3
        flow.append(
            Fm.AllInOneBlock,
            subnet_constructor=_subnet(kernel, config.hidden_ratio),
            affine_clamping=2.0,
            permute_soft=False,
        )
    return flow


class NodeFlow(nn.Module):
    """LayerNorm then the flow, for one node: ``x -> (z, log|det J|)``."""

    def __init__(self, shape: tuple[int, int, int], config: FastFlowConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(list(shape), elementwise_affine=True)
        self.flow = build_flow(shape, config)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, log_jac = self.flow(self.norm(x))
        return z, log_jac


def seeded_flows(shapes: Sequence[tuple[int, ...]], config: FastFlowConfig) -> nn.ModuleList:
    """One :class:`NodeFlow` per (C, H, W) shape, initialised from ``config.seed`` with the caller's
    generators untouched: torch's draws the weights, NumPy's global one FrEIA's channel permutations
    (``AllInOneBlock`` calls ``np.random.permutation``)."""
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            np.random.seed(config.seed)
            return nn.ModuleList(NodeFlow(shape, config) for shape in shapes)  # type: ignore[arg-type]
    finally:
        np.random.set_state(numpy_state)


def fastflow_maps(flows: Sequence[nn.Module], features: Sequence[torch.Tensor]) -> torch.Tensor:
    """(N, h, w) maps on the first node's grid: ``-exp(-0.5 mean_c z^2)`` per node, averaged."""
    maps = []
    grid: tuple[int, int] | None = None
    for flow, x in zip(flows, features, strict=True):
        z, _ = flow(x)
        node_map = -torch.exp(-0.5 * z.square().mean(dim=1, keepdim=True))
        if grid is None:
            grid = (int(node_map.shape[-2]), int(node_map.shape[-1]))
        elif tuple(node_map.shape[-2:]) != grid:
            node_map = F.interpolate(node_map, size=grid, mode="bilinear", align_corners=False)
        maps.append(node_map)
    return torch.stack(maps).mean(0)[:, 0]


@register_detector
class FastFlow(Detector):
    name = "fastflow"
    config_class = FastFlowConfig
    localizes = True
    # FastFlow's ResNet setting: the first three stages' outputs (strides 4, 8, 16).
    default_nodes = NodeRule(last_at=(4, 8, 16))
    #: what :attr:`progress` counts
    progress_unit = "step"

    config: FastFlowConfig

    def __init__(self, config: FastFlowConfig | None = None, **params: object) -> None:
        super().__init__(config, **params)
        self.flows_: nn.ModuleList | None = None
        #: mean training loss per step
        self.losses_: list[float] = []
        #: called after every step with (step, steps, loss, seconds so far)
        self.progress: Callable[[int, int, float, float], None] | None = None
        #: the device training runs on (the pipeline's); the fitted flows come back to the CPU
        self.train_device = "cpu"

    def _inputs(self, batch: FeatureBatch) -> list[torch.Tensor]:
        return [spatial(node, x).float() for node, x in batch.items()]

    def fit(self, train: FeatureBatch) -> FastFlow:
        if len(train) == 0:
            raise DetectorError("FastFlow needs at least one training image")
        c = self.config
        inputs = self._inputs(train)
        thin = [node for node, x in zip(train.nodes, inputs, strict=True) if int(x.shape[1]) < 2]
        if thin:
            raise DetectorError(
                f"FastFlow's coupling blocks need at least 2 channels; node {thin[0]!r} has 1"
            )
        n = int(inputs[0].shape[0])
        device = torch.device(self.train_device)
        flows = seeded_flows([tuple(int(s) for s in x.shape[1:]) for x in inputs], c).to(device)
        optimiser = torch.optim.Adam(flows.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        generator = torch.Generator().manual_seed(c.seed)
        flows.train()
        self.losses_ = []
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=generator)
        at = 0
        with torch.enable_grad():
            for step in range(c.steps):
                if at >= n:  # a new pass over the images, freshly shuffled
                    order, at = torch.randperm(n, generator=generator), 0
                rows = order[at : at + c.batch_size]
                at += c.batch_size
                loss = torch.zeros((), device=device)
                for flow, x in zip(flows, inputs, strict=True):
                    z, log_jac = flow(x[rows].to(device))
                    loss = loss + (0.5 * z.square().sum(dim=(1, 2, 3)) - log_jac).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                self.losses_.append(float(loss.detach()))
                if self.progress is not None:
                    self.progress(step + 1, c.steps, self.losses_[-1], time.perf_counter() - t0)
        self.flows_ = flows.cpu().eval().requires_grad_(False)
        return self

    def score(self, test: FeatureBatch) -> Scores:
        self._check_fitted("flows_")
        assert self.flows_ is not None
        inputs = self._inputs(test)
        expected = [tuple(f.norm.normalized_shape) for f in self.flows_]  # type: ignore[union-attr,arg-type]
        got = [tuple(int(s) for s in x.shape[1:]) for x in inputs]
        if got != expected:
            raise DetectorError(
                f"FastFlow was trained on node shapes {expected} but got {got}: score with the nodes and "
                "image size it was trained with"
            )
        with torch.no_grad():  # in chunks of images: memory does not grow with the number scored
            parts = [
                fastflow_maps(list(self.flows_), [x[s : s + SCORE_CHUNK] for x in inputs])
                for s in range(0, max(int(inputs[0].shape[0]), 1), SCORE_CHUNK)
            ]
        maps = torch.cat(parts).numpy().astype(np.float32)
        return Scores(maps.reshape(len(maps), -1).max(axis=1), maps)

    def module(self, nodes: Sequence[str]) -> nn.Module:
        from stratad.detectors.modules import FastFlowModule

        self._check_fitted("flows_")
        assert self.flows_ is not None
        return FastFlowModule(self, nodes, self.flows_)

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted("flows_")
        assert self.flows_ is not None
        return {k: v for k, v in self.flows_.state_dict().items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        shapes: list[tuple[int, ...]] = []
        while f"{len(shapes)}.norm.weight" in state:
            shapes.append(
                tuple(int(s) for s in state_tensor(state, f"{len(shapes)}.norm.weight", 3, "FastFlow").shape)
            )
        if not shapes:
            raise DetectorError("FastFlow state has no node flow (0.norm.weight)")
        flows = seeded_flows(shapes, self.config)
        try:
            flows.load_state_dict(dict(state))
        except RuntimeError as exc:
            raise DetectorError(
                f"FastFlow state does not fit its flows: {str(exc).splitlines()[0]}"
            ) from None
        self.flows_ = flows.eval().requires_grad_(False)
