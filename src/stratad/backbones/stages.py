"""What a backbone publishes about itself: its stage ends with channels and stride (timm's
``feature_info``), so detectors state their default nodes by stride and a newly registered backbone
needs no edit anywhere else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stratad.backbones.nodes import list_nodes, resolve_nodes
from stratad.backbones.registry import Backbone
from stratad.errors import NodeError

#: Input size at which strides are measured (a stride is the ratio of input to output side).
STAGE_PROBE_SIZE = 256


@dataclass(frozen=True)
class StageInfo:
    """One stage end: the module name, its last graph node, channels and stride (``0`` for the
    globally pooled output)."""

    module: str
    node: str
    channels: int
    stride: float


def stage_info(backbone: Backbone) -> tuple[list[StageInfo], StageInfo | None]:
    """The backbone's stage ends in graph order, and its pooled output (None when it names none)."""
    infos = {i.name: i for i in list_nodes(backbone, image_size=STAGE_PROBE_SIZE)}

    def describe(module: str) -> StageInfo:
        node = resolve_nodes(backbone, [module])[0]
        info = infos[node]
        stride = STAGE_PROBE_SIZE / info.height if info.height and info.height > 1 else 0.0
        return StageInfo(module, node, info.channels, stride)

    stages = [describe(m) for m in backbone.stages]
    pooled = describe(backbone.pooled) if backbone.pooled else None
    return stages, pooled


@dataclass(frozen=True)
class NodeRule:
    """A detector's default nodes, stated by stride (resolved by :meth:`resolve`, in graph order):

    - ``last_at``: the last stage end at each of these strides (PatchCore: 8 and 16);
    - ``first_at``: the first stage end at each of these strides;
    - ``every_stage``: every stage end (Gaussian AD);
    - ``last_up_to``: ``(count, stride)``, the last ``count`` stage ends at strides <= ``stride``;
    - ``pooled``: the globally pooled output (DN2, GDE, SPADE's retrieval feature).
    """

    last_at: tuple[int, ...] = ()
    first_at: tuple[int, ...] = ()
    every_stage: bool = False
    last_up_to: tuple[int, int] | None = None
    pooled: bool = False

    def resolve(self, stages: Sequence[StageInfo], pooled: StageInfo | None, backbone: str = "") -> list[str]:
        chosen: list[StageInfo] = []
        for strides, pick_last in ((self.last_at, True), (self.first_at, False)):
            for stride in strides:
                at = [s for s in stages if s.stride == stride]
                if not at:
                    have = sorted({f"{s.stride:g}" for s in stages})
                    raise NodeError(
                        f"{backbone or 'this backbone'} has no stage at stride {stride} (stages at "
                        f"{', '.join(have) or 'none published'}); pass --nodes"
                    )
                chosen.append(at[-1] if pick_last else at[0])
        if self.every_stage:
            chosen.extend(stages)
        if self.last_up_to is not None:
            count, limit = self.last_up_to
            chosen.extend([s for s in stages if 0 < s.stride <= limit][-count:])
        order = {s.module: i for i, s in enumerate(stages)}
        unique = sorted({s.module: s for s in chosen}.values(), key=lambda s: order[s.module])
        names = [s.module for s in unique]
        if self.pooled:
            if pooled is None:
                raise NodeError(f"{backbone or 'this backbone'} names no pooled output; pass --nodes")
            names.append(pooled.module)
        if not names:
            raise NodeError(
                f"no default nodes for {backbone or 'this backbone'}: it publishes no stages; pass --nodes"
            )
        return names
