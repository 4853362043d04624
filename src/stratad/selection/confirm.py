"""Keep the default nodes unless a candidate beats them clearly on the synthetic validation set.

A synthetic ranking is noisy: on MTD the default pair ranked 2nd of 150 nodes with Simple defects,
0.0002 P_h below a node that was far worse on real defects. ``select`` therefore treats the
detector's default nodes as the incumbent: the synthetic winner replaces them only when it beats
them in at least ``level`` (95 %) of paired bootstrap resamples of the validation images (good and
defective images resampled separately, both candidates scored on the same resample). The rule is a
plain one-sided bootstrap test; nothing in it is fitted to any real test set.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from stratad.selection.config import CRITERION_COLUMN, Criterion, SweepConfig

#: paired bootstrap resamples of the validation set
RESAMPLES = 100
#: share of resamples the challenger must win to replace the default
LEVEL = 0.95


@dataclass
class Confirmation:
    """The outcome of the challenger-vs-default test."""

    challenger: str
    default: str
    #: share of resamples where the challenger's criterion beat the default's
    win_rate: float
    resamples: int
    level: float
    #: the node(s) finally chosen
    chosen: str


def _value(
    labels: np.ndarray, scores: np.ndarray, masks: Any, maps: Any, criterion: Criterion, limit: float
) -> float:
    from stratad.metrics import aupro, harmonic_mean, image_auroc

    auroc = image_auroc(labels, scores)
    if CRITERION_COLUMN[criterion] == "image_auroc" or maps is None:
        return auroc
    return harmonic_mean(auroc, aupro(masks, maps, limit))


def confirm_against_default(
    cfg: SweepConfig,
    train_images: Any,
    evaluation: Any,
    challenger: str,
    default: str,
    criterion: Criterion | str = Criterion.p_h,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    per_image: int = 1,
) -> Confirmation:
    """Paired bootstrap of ``challenger`` against ``default`` on ``evaluation`` (the synthetic
    validation set), both fitted on ``train_images`` exactly as the sweep fits them. With
    ``per_image`` defects on each defect-bound image (consecutive in the set), the images are
    resampled, each with all its defects: they are not independent samples."""
    from stratad.selection.sweep import effective_pixel_stride, predict_candidates

    crit = Criterion(criterion)
    preds = predict_candidates(cfg, train_images, evaluation, [challenger, default])
    labels = np.asarray(evaluation.labels)
    step = effective_pixel_stride(cfg)
    masks = [np.ascontiguousarray(m[::step, ::step]) for m in evaluation.masks]
    if evaluation.pixel_images is not None:  # pragma: no cover - synthetic sets have every mask
        raise ValueError("the confirmation needs a mask for every validation image")
    rng = np.random.default_rng(cfg.seed)
    good, bad = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    groups = bad.reshape(-1, per_image)  # the defects of one image, together

    def draw() -> np.ndarray:  # good images first, then defective ones (the order of the draws)
        goods = rng.choice(good, good.size)
        return np.concatenate([goods, groups[rng.choice(len(groups), len(groups))].ravel()])

    draws = [draw() for _ in range(resamples)]

    def challenger_wins(idx: np.ndarray) -> bool:
        values = []
        for name in (challenger, default):
            p = preds[name]
            maps = None if p.maps is None else [p.maps[i] for i in idx]
            values.append(
                _value(labels[idx], p.image_scores[idx], [masks[i] for i in idx], maps, crit, cfg.fpr_limit)
            )
        return bool(values[0] > values[1])

    # Sorting the pixel scores dominates and releases the GIL: one thread per core.
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        wins = sum(pool.map(challenger_wins, draws))
    win_rate = wins / resamples
    chosen = challenger if win_rate >= level else default
    return Confirmation(challenger, default, win_rate, resamples, level, chosen)
