"""Successive halving over candidate nodes: every node first on a small budget, the best third
promoted to a three times larger one, until the last round runs the full budget (Jamieson &
Talwalkar, 2016; Li et al.'s Hyperband uses the same rounds). Up to four rounds: with 150 nodes,
150 -> 50 -> 17 -> 6 candidates on 1/27, 1/9, 1/3 and all of the budget.

A round keeps the best third of its distinct nodes (twins with identical outputs count once).
A round's budget ``b`` (1/9, 1/3, 1 for three rounds) takes a seeded subset of ``b`` of the D_T
images, ``sqrt(b)`` of the good and of the defective validation images, and a PatchCore coreset of
``b`` of its size. Each round is an ordinary resumable sweep in ``rounds/<r>`` (its own nodes.csv
and stamp); the default node combination, when swept, is scored in every round and never dropped,
so halving cannot end below the default either. The last round's rows are the result: every
promoted node and the default, at the full budget, exactly as the exhaustive sweep scores them.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stratad.errors import StratadError
from stratad.selection.config import (
    COMBINATION_SEPARATOR,
    NodeResult,
    SweepConfig,
    candidate_nodes,
    top_pairs,
)

#: Each round keeps a third of the candidates and triples the budget.
ETA = 3
#: Rounds at most: budgets 1/27, 1/9, 1/3, 1. On MTD (150 Lite0 nodes, 400 D_T images) four
#: rounds kept the exhaustive sweep's selection on 3 of 3 seeds at 2/3 of three rounds' wall time
#: (``benchmarks/bench_halving.py --rounds 3|4``).
MAX_ROUNDS = 4
#: Fewest images of each kind a round is given (fit, good validation, defective validation).
MIN_IMAGES = 8


@dataclass(frozen=True)
class Round:
    index: int
    #: fraction of the full budget
    budget: float
    #: candidates entering the round (node names, twins included, before the first round finds
    #: them; the default combination is added by the sweep)
    candidates: int


def schedule(n_candidates: int, rounds: int = MAX_ROUNDS, eta: int = ETA) -> list[Round]:
    """The rounds for ``n_candidates`` nodes: as many as keep at least ``eta`` nodes in the last."""
    count = 1
    while count < rounds and n_candidates / eta**count >= eta:
        count += 1
    plan, left = [], n_candidates
    for r in range(count):
        plan.append(Round(r, float(eta ** (r - count + 1)), left))
        left = math.ceil(left / eta)
    return plan


def _subset(indices: np.ndarray, fraction: float, seed: int, pool: int) -> np.ndarray:
    """The first ``fraction`` of a seeded permutation of ``indices``: the subsets of a smaller
    budget are contained in those of a larger one, so a round reuses the earlier rounds' features."""
    keep = min(len(indices), max(MIN_IMAGES, round(fraction * len(indices))))
    order = np.random.default_rng([seed, pool]).permutation(indices)
    return np.sort(order[:keep])


@dataclass(frozen=True)
class RoundData:
    """A round's training images and evaluation set, with the positions of both in the full sets
    (the keys of the feature memo)."""

    train_images: torch.Tensor
    evaluation: Any
    train_keys: np.ndarray
    test_keys: np.ndarray


def round_data(train_images: torch.Tensor, evaluation: Any, budget: float, seed: int) -> RoundData:
    """The training images and the evaluation set of a round of ``budget`` (module docstring)."""
    from stratad.selection.sweep import EvalSet

    labels = np.asarray(evaluation.labels)
    if budget >= 1.0:
        return RoundData(train_images, evaluation, np.arange(len(train_images)), np.arange(len(labels)))
    fit = _subset(np.arange(len(train_images)), budget, seed, 0)
    chosen = np.sort(
        np.concatenate([_subset(np.flatnonzero(labels == k), math.sqrt(budget), seed, 1 + k) for k in (0, 1)])
    )
    if evaluation.pixel_images is None:
        masks = [evaluation.masks[i] for i in chosen]
        pixel = None
    else:  # masks belong to the pixel images only: keep those of the chosen ones, renumbered
        position = {int(image): k for k, image in enumerate(evaluation.pixel_images)}
        kept = [int(i) for i in chosen if int(i) in position]
        masks = [evaluation.masks[position[i]] for i in kept]
        pixel = np.array([int(np.flatnonzero(chosen == i)[0]) for i in kept], dtype=np.int64)
    sub = EvalSet(evaluation.images[chosen], labels[chosen], masks, pixel)
    return RoundData(train_images[fit], sub, fit, chosen)


def round_config(cfg: SweepConfig, nodes: list[str], budget: float) -> SweepConfig:
    """The sweep settings of a round: its nodes, and a coreset of ``budget`` of the size (PatchCore)."""
    params = dict(cfg.detector_params)
    if budget < 1.0 and cfg.detector == "patchcore" and "coreset_fraction" not in params:
        from stratad.detectors.patchcore import PatchCoreConfig

        size = int(params.get("coreset_size", PatchCoreConfig.coreset_size))
        params["coreset_size"] = max(50, round(size * budget))
    return replace(cfg, nodes=nodes, detector_params=params)


def halving_sweep(
    cfg: SweepConfig,
    train_images: torch.Tensor,
    evaluation: Any,
    out_dir: Path,
    progress: Callable[[str, int, int], None] | None = None,
    relative_rf: dict[str, float] | None = None,
    settings: dict[str, Any] | None = None,
    criterion_column: str = "p_h",
    eta: int = ETA,
    rounds: int | None = None,
) -> list[NodeResult]:
    """Successive halving of ``cfg.nodes`` (module docstring) in at most ``rounds`` rounds
    (MAX_ROUNDS when not given); rows of the last round."""
    from stratad.backbones import build_backbone, list_nodes, resolve_nodes
    from stratad.detectors import detector_class
    from stratad.selection.sweep import FeatureMemo, run_sweep

    if (out_dir / "sweep.json").is_file():
        raise StratadError(f"{out_dir} holds an exhaustive selection; use another --out folder for --halving")
    backbone = build_backbone(cfg.backbone, weights=cfg.weights, seed=cfg.seed)
    candidates = resolve_nodes(backbone, cfg.nodes)
    if detector_class(cfg.detector).localizes:  # nodes without a map cannot localise
        heights = {i.name: i.height for i in list_nodes(backbone, image_size=cfg.image_size)}
        candidates = [n for n in candidates if heights[n] > 0]
    if not candidates:
        raise StratadError("no candidate node has a spatial output for this detector")
    plan = schedule(len(candidates), rounds=MAX_ROUNDS if rounds is None else rounds, eta=eta)
    rows: list[NodeResult] = []
    memo = FeatureMemo()
    for stage in plan:
        data = round_data(train_images, evaluation, stage.budget, cfg.seed)
        fit, evaluation_r = data.train_images, data.evaluation
        memo.keys = (data.train_keys, data.test_keys)
        round_cfg = round_config(cfg, candidates, stage.budget)

        def tell(label: str, done: int, total: int, stage: Round = stage) -> None:
            if progress is not None:
                progress(f"round {stage.index + 1}/{len(plan)}: {label}", done, total)

        round_settings = {**(settings or {}), "halving_round": stage.index, "halving_budget": stage.budget}
        folder = out_dir / "rounds" / str(stage.index)
        rows = run_sweep(
            round_cfg, fit, evaluation_r, folder, tell, relative_rf, round_settings,
            backbone=backbone, memo=memo,
        )  # fmt: skip
        if stage.index == plan[-1].index and cfg.pairs > 1:  # pairs of the best, at the full budget
            pairs = top_pairs(rows, cfg.pairs, criterion_column)
            rows = run_sweep(
                round_cfg, fit, evaluation_r, folder, tell, relative_rf, round_settings, pairs,
                backbone=backbone, memo=memo,
            )  # fmt: skip
        singles = [r for r in rows if COMBINATION_SEPARATOR not in r.node]
        ranked = sorted(
            (r for r in singles if not r.same_as and not math.isnan(r.value(criterion_column))),
            key=lambda r: -r.value(criterion_column),
        )  # stable: ties keep graph order
        keep = {r.node for r in ranked[: math.ceil(len(ranked) / eta)]}  # a third of the distinct nodes
        candidates = [n for n in candidates if n in keep]
        combined = {n for r in rows if COMBINATION_SEPARATOR in r.node for n in candidate_nodes(r.node)}
        memo.keep_only(set(candidates) | combined)  # what the next round asks for
    # The last round's table where a selection folder has it (rounds/<r>/ keep every round).
    shutil.copyfile(folder / "nodes.csv", out_dir / "nodes.csv.tmp")
    os.replace(out_dir / "nodes.csv.tmp", out_dir / "nodes.csv")
    return rows
