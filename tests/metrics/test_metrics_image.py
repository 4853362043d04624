"""Image AUROC and F1-max."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from stratad.errors import DataError
from stratad.metrics import f1_max, image_auroc


def _brute_force_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    best = 0.0
    for threshold in np.unique(scores):
        predicted = scores >= threshold
        tp = int(np.sum(predicted & labels))
        fp = int(np.sum(predicted & ~labels))
        fn = int(np.sum(~predicted & labels))
        if tp:
            best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def test_image_auroc_hand_case() -> None:
    # Anomalous 0.9 beats both normals; anomalous 0.4 beats 0.1 and ties 0.4: (2 + 1 + 0.5) / 4.
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.9, 0.4]) == pytest.approx(0.875, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_image_auroc_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(50) < 0.4
    scores = np.round(rng.random(50) + 0.3 * labels, 1)
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-15)


def test_f1_max_hand_case() -> None:
    # t=0.8: TP=1, FP=0, FN=2 -> 2/4 = 0.5; t=0.6: TP=2, FP=1, FN=1 -> 4/6; t=0.3: TP=3, FP=1 -> 6/7.
    labels = [1, 0, 1, 0, 1, 0]
    scores = [0.8, 0.6, 0.6, 0.1, 0.3, 0.2]
    assert f1_max(labels, scores) == pytest.approx(6 / 7, abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_f1_max_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(40) < 0.3
    labels[0] = True
    scores = np.round(rng.random(40) + 0.2 * labels, 1)
    assert f1_max(labels, scores) == pytest.approx(_brute_force_f1_max(labels, scores), rel=1e-12)


def test_single_class_is_an_error() -> None:
    with pytest.raises(DataError, match="all 3 are normal"):
        image_auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(DataError, match="all 2 are anomalous"):
        image_auroc([1, 1], [0.1, 0.2])
    with pytest.raises(DataError, match="at least one anomalous"):
        f1_max([0, 0], [0.1, 0.2])


@pytest.mark.parametrize(
    ("labels", "scores"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3]),  # label outside {0, 1}
        ([0, 1], [0.1, 0.2, 0.3]),  # length mismatch
        ([0, 1], [0.1, float("nan")]),
        ([[0, 1]], [[0.1, 0.2]]),  # not 1-D
    ],
)
def test_bad_inputs_raise(labels: list, scores: list) -> None:
    with pytest.raises(DataError):
        image_auroc(labels, scores)
