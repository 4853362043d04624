"""Image-level metrics: AUROC and the best F1 over all thresholds."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from sklearn.metrics import precision_recall_curve, roc_auc_score

from stratad.errors import DataError
from stratad.metrics._validation import check_labels_scores


def image_auroc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve of image scores; ``labels`` are 0 (normal) / 1 (anomalous)."""
    checked_labels, checked_scores = check_labels_scores(labels, scores)
    n_anomalous = int(checked_labels.sum())
    if n_anomalous in (0, checked_labels.shape[0]):
        kind = "normal" if n_anomalous == 0 else "anomalous"
        n_images = checked_labels.shape[0]
        raise DataError(f"image AUROC needs normal and anomalous images, but all {n_images} are {kind}.")
    return float(roc_auc_score(checked_labels, checked_scores))


def f1_max(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Maximum F1 score over every threshold on ``scores`` (a threshold-free upper bound on F1)."""
    checked_labels, checked_scores = check_labels_scores(labels, scores)
    if not checked_labels.any():
        raise DataError("F1 needs at least one anomalous image, but every label is 0.")
    precision, recall, _ = precision_recall_curve(checked_labels, checked_scores)
    denominator = precision + recall
    # The curve's final point (recall 0, precision 1) and thresholds with no true positive have
    # F1 = 0; dividing there would give NaN.
    f1 = np.divide(
        2.0 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    return float(f1.max())
