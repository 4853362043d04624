"""The light half of selection: settings, criteria and result rows (no torch), which the command
line imports at start-up."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

#: Below this many good or defective validation images, ``select`` warns that the synthetic ranking
#: is unreliable: image AUROC then moves in steps of at least 1 / (10 x 10), and a node can win by one
#: image (the issue's case: 2 good + 4 synthetic images, the winner 45th of 149 on real defects).
MIN_VALIDATION_IMAGES = 10


class FinalFit(str, enum.Enum):
    """What ``select`` fits for the chosen node."""

    #: every training image (stratad's default: the most normal data)
    all = "all"
    #: D_T, the 70 % the selection fitted each node on (the selection study's protocol)
    selection = "selection"
    #: no model
    none = "none"


class Criterion(str, enum.Enum):
    p_h = "p_h"
    p_cls = "p_cls"


CRITERION_COLUMN = {Criterion.p_h: "p_h", Criterion.p_cls: "image_auroc"}


def result_columns(fpr_limit: float = 0.3) -> tuple[str, ...]:
    """The columns of ``nodes.csv``; the AU-PRO column is named by its FPR limit (``aupro_30`` for 0.3,
    ``aupro_10`` for 0.1), so a sweep at another limit keeps its AU-PRO instead of dropping it."""
    from stratad.metrics import aupro_key

    return tuple(aupro_key(fpr_limit) if c == "aupro" else c for c in _COLUMNS)


_COLUMNS = (
    "node",
    "channels",
    "height",
    "width",
    "stride",
    "relative_rf",
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "p_h",
    "fit_s",
    "score_s",
    "same_as",
)


#: Joins the nodes of a multi-node candidate in its name (``blocks.2.1.add+blocks.4.2.add``).
COMBINATION_SEPARATOR = "+"


def candidate_nodes(candidate: str) -> list[str]:
    """The nodes of a candidate name (one node, or a combination)."""
    return candidate.split(COMBINATION_SEPARATOR)


@dataclass(kw_only=True)
class NodeResult:
    """One row of ``nodes.csv``: a node, its shape, and how well the detector did on it. Metrics a
    detector cannot have (pixel metrics of an image-only detector) are None."""

    node: str
    image_auroc: float
    pixel_auroc: float | None = None
    #: AU-PRO up to ``fpr_limit`` (column ``aupro_30`` for 0.3)
    aupro: float | None = None
    p_h: float | None = None
    fit_s: float = 0.0
    score_s: float = 0.0
    channels: int = 0
    height: int = 0
    width: int = 0
    stride: float = 0.0
    relative_rf: float | None = None
    #: the earlier node whose features this node's equal (scored once, reported under both names)
    same_as: str = ""
    fpr_limit: float = 0.3

    @property
    def aupro_column(self) -> str:
        return result_columns(self.fpr_limit)[_COLUMNS.index("aupro")]

    def row(self) -> dict[str, Any]:
        """The row as ``nodes.csv`` and ``selected.json`` write it (AU-PRO named by its limit)."""
        values = {c: getattr(self, c) for c in _COLUMNS}
        values[self.aupro_column] = values.pop("aupro")
        return {c: values[c] for c in result_columns(self.fpr_limit)}

    def value(self, column: str) -> float:
        """A metric by its column name (``p_h``, ``image_auroc``, ``aupro_30``); NaN when absent."""
        found = self.aupro if column == self.aupro_column else getattr(self, column, None)
        return math.nan if found is None else float(found)

    @classmethod
    def from_row(cls, row: dict[str, str], fpr_limit: float = 0.3) -> NodeResult:
        """A row read back from ``nodes.csv`` (resume, ``stratad analyze``)."""

        def number(text: str | None) -> float | None:
            return None if text in (None, "") else float(text)

        aupro = row.get(result_columns(fpr_limit)[_COLUMNS.index("aupro")])
        return cls(
            node=row["node"],
            image_auroc=float(row["image_auroc"]),
            pixel_auroc=number(row.get("pixel_auroc")),
            aupro=number(aupro),
            p_h=number(row.get("p_h")),
            fit_s=number(row.get("fit_s")) or 0.0,
            score_s=number(row.get("score_s")) or 0.0,
            channels=int(row.get("channels") or 0),
            height=int(row.get("height") or 0),
            width=int(row.get("width") or 0),
            stride=number(row.get("stride")) or 0.0,
            relative_rf=number(row.get("relative_rf")),
            same_as=row.get("same_as") or "",
            fpr_limit=fpr_limit,
        )


@dataclass(kw_only=True)
class SweepConfig:
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    nodes: list[str] = field(default_factory=lambda: ["all"])
    detector: str = "patchcore"
    detector_params: dict[str, Any] = field(default_factory=dict)
    image_size: int = 256
    batch_size: int = 16
    #: spatial maps larger than this are average-pooled to it before caching (bounds RAM and the
    #: coreset cost of very early nodes; 32 = stride 8 at 256 px)
    #: 0 = every node at its own resolution (native; early nodes then cost far more)
    max_grid: int = 32
    #: RAM for one chunk of cached features; 0 = half of the memory available when the sweep starts
    memory_budget_mb: int = 0
    #: parallel processes for the per-node work; 0 = one per CPU core, at most 4
    workers: int = 1
    #: fit with exactly ``detector_params``; by default the detector's ``sweep_params`` (cheaper
    #: approximations measured to keep the node ranking) fill in options the user did not set
    exact: bool = False
    #: unless ``exact``, pixel metrics are computed on every ``pixel_stride``-th row and column of
    #: the maps and masks (a regular subsample of the smooth maps: 2 = a quarter of the pixels)
    pixel_stride: int = 2
    seed: int = 0
    smoothing_sigma: float = 4.0
    fpr_limit: float = 0.3
    device: str = "cpu"
    #: what was swept (dataset / category), carried into sweep.json for `stratad analyze`
    label: str = ""
    #: bits per sample of >8-bit images (see ``stratad.data.io.read_image_rgb``); None = per image
    bit_depth: int | None = None
    #: also score the detector's default node combination (PatchCore: the last nodes at strides 8
    #: and 16) as one candidate, so a selection can never end below the default choice
    with_default: bool = False
    #: also score every pair of the ``pairs`` best single nodes (by the selection criterion) as one
    #: candidate each (0 = no pairs)
    pairs: int = 0


def top_pairs(rows: list[NodeResult], count: int, column: str) -> list[str]:
    """Every pair of the ``count`` best distinct single nodes of ``rows`` by ``column``, each named in
    the rows' (graph) order: the extra candidates of ``SweepConfig.pairs``."""
    from itertools import combinations

    singles = [r for r in rows if COMBINATION_SEPARATOR not in r.node and not r.same_as]
    scored = [r for r in singles if not math.isnan(r.value(column))]
    best = {r.node for r in sorted(scored, key=lambda r: -r.value(column))[:count]}
    ordered = [r.node for r in singles if r.node in best]
    return [COMBINATION_SEPARATOR.join(pair) for pair in combinations(ordered, 2)]
