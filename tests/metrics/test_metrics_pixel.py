"""Pixel AUROC, PRO curve and AU-PRO against hand-computed cases, sklearn and a direct reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

from stratad.errors import DataError, MaskError
from stratad.metrics import PixelTruth, aupro, evaluate, pixel_auroc, pixel_metrics, pro_curve, trapezoid


def _reference_pro_curve(masks: list[np.ndarray], maps: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Literal per-pixel algorithm of the official code: argsort all pixels, cumsum, keep run ends."""
    fp_change, pro_change, n_regions = [], [], 0
    for mask in masks:
        regions, n = ndimage.label(mask, structure=np.ones((3, 3)))
        n_regions += n
        fp_change.append((regions == 0).ravel().astype(float))
        weight = np.zeros(mask.size)
        for k in range(1, n + 1):
            region = (regions == k).ravel()
            weight[region] = 1.0 / region.sum()
        pro_change.append(weight)
    scores = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
    fp, pro = np.concatenate(fp_change), np.concatenate(pro_change)
    order = np.argsort(scores)[::-1]
    scores, fp, pro = scores[order], fp[order], pro[order]
    fprs, pros = np.cumsum(fp) / fp.sum(), np.cumsum(pro) / n_regions
    keep = np.append(np.diff(scores) != 0, True)
    return np.r_[0.0, fprs[keep], 1.0], np.r_[0.0, pros[keep], 1.0]


def _random_set(seed: int, n_images: int = 6) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images of different sizes, blob-shaped defects, some defect-free images, heavily tied scores."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(n_images):
        shape = (int(rng.integers(5, 20)), int(rng.integers(5, 30)))
        mask = rng.random(shape) < (0.15 if i % 3 else 0.0)
        # Scores on a coarse grid so that defect and defect-free pixels share many values.
        score = np.round(rng.random(shape) + 0.6 * mask, 1).astype(np.float32)
        masks.append(mask)
        maps.append(score)
    return masks, maps


# --- AU-PRO: hand-computed cases -------------------------------------------------------------------


def test_region_half_covered() -> None:
    # One 2x2 region; two of its pixels score 0.9, everything else 0.
    # Curve: (0,0) -> (0,0.5) [t=0.9] -> (1,1) [t=0]. At FPR 0.3: PRO = 0.5 + 0.5 * 0.3 = 0.65,
    # area = 0.5 * (0.5 + 0.65) * 0.3 = 0.1725, AU-PRO = 0.1725 / 0.3 = 0.575.
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True
    score = np.zeros((4, 4), dtype=np.float32)
    score[0, :2] = 0.9
    assert aupro([mask], [score]) == pytest.approx(0.575, abs=1e-12)
    # Pixel AUROC: 2 defects beat all 12 normals, 2 tie with all 12: (24 + 0.5 * 24) / 48 = 0.75.
    assert pixel_auroc([mask], [score]) == pytest.approx(0.75, abs=1e-12)
    # F1 at t=0.9: TP=2, FP=0 -> 2*2 / (2 + 0 + 4) = 2/3; at t=0: 8 / 20 = 0.4.
    assert pixel_metrics([mask], [score]).pixel_f1_max == pytest.approx(2 / 3, abs=1e-12)


def test_pro_is_mean_over_regions_not_pixels() -> None:
    # Image A: a 3x3 region (9 px) scoring 0.8. Image B: a 1-px region scoring 0.2.
    # 19 of the 190 defect-free pixels score 0.5, the rest 0.
    # Curve: (0, 0.5) [t=0.8, region A covered] -> (0.1, 0.5) [t=0.5] -> (0.1, 1) [t=0.2] -> (1, 1).
    # AU-PRO(0.3) = (0.5 * 0.1 + 1.0 * 0.2) / 0.3 = 5/6.
    # (Weighting by pixels would give PRO 0.9 at t=0.8 and (0.09 + 0.2) / 0.3 = 0.9667 instead.)
    mask_a = np.zeros((10, 10), dtype=bool)
    mask_a[2:5, 2:5] = True
    mask_b = np.zeros((10, 10), dtype=bool)
    mask_b[7, 7] = True
    map_a = np.where(mask_a, 0.8, 0.0).astype(np.float32)
    map_b = np.where(mask_b, 0.2, 0.0).astype(np.float32)
    map_b[0, :10] = 0.5
    map_b[1, :9] = 0.5
    assert aupro([mask_a, mask_b], [map_a, map_b]) == pytest.approx(5 / 6, abs=1e-12)


def test_regions_are_eight_connected() -> None:
    # (0,0) and (1,1) touch diagonally: one region, half covered at t=1; (5,5) is a second region,
    # fully covered. 8-connected PRO at t=1: (0.5 + 1) / 2 = 0.75 (4-connectivity would give 2/3).
    # Curve (0,0) -> (0,0.75) -> (1,1): PRO at 0.3 = 0.75 + 0.25 * 0.3 = 0.825,
    # AU-PRO = 0.5 * (0.75 + 0.825) * 0.3 / 0.3 = 0.7875.
    mask = np.zeros((8, 8), dtype=bool)
    mask[0, 0] = mask[1, 1] = mask[5, 5] = True
    score = np.zeros((8, 8))
    score[0, 0] = score[5, 5] = 1.0
    assert aupro([mask], [score]) == pytest.approx(0.7875, abs=1e-12)


def _tie_case() -> tuple[np.ndarray, np.ndarray]:
    # A 2-px region scoring 0.9 and 0.5; the 4 defect-free pixels score 0.5, 0.5, 0.1, 0.1.
    mask = np.array([[True, True, False, False, False, False]])
    score = np.array([[0.9, 0.5, 0.5, 0.5, 0.1, 0.1]], dtype=np.float32)
    return mask, score


def test_tied_scores_form_one_step() -> None:
    # t=0.9: (0, 0.5); t=0.5 takes one defect and two normals at once: (0.5, 1); t=0.1: (1, 1).
    # The tie is a slanted segment: PRO at 0.3 = 0.5 + 0.5 * 0.3 / 0.5 = 0.8,
    # AU-PRO = 0.5 * (0.5 + 0.8) * 0.3 / 0.3 = 0.65 (defect first would give 1.0, normals first 0.5).
    mask, score = _tie_case()
    fprs, pros = pro_curve([mask], [score])
    np.testing.assert_allclose(fprs, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-15)
    np.testing.assert_allclose(pros, [0.0, 0.5, 1.0, 1.0, 1.0], atol=1e-15)
    assert aupro([mask], [score]) == pytest.approx(0.65, abs=1e-12)
    # AUROC: 0.9 beats 4 normals; 0.5 beats 2 and ties 2 -> (4 + 2 + 1) / 8 = 0.875.
    assert pixel_auroc([mask], [score]) == pytest.approx(0.875, abs=1e-12)


@pytest.mark.parametrize(
    ("fpr_limit", "expected"),
    [
        # Limit between samples: PRO(0.25) = 0.75, area = 0.5 * (0.5 + 0.75) * 0.25 = 0.15625.
        (0.25, 0.15625 / 0.25),
        # Limit on a sample: no interpolation, area = 0.5 * (0.5 + 1) * 0.5 = 0.375.
        (0.5, 0.375 / 0.5),
        # Whole curve: 0.375 + 1.0 * 0.5 = 0.875.
        (1.0, 0.875),
        # Small limit: PRO(0.05) = 0.55, area = 0.5 * (0.5 + 0.55) * 0.05 = 0.02625.
        (0.05, 0.02625 / 0.05),
    ],
)
def test_fpr_limit_interpolation(fpr_limit: float, expected: float) -> None:
    mask, score = _tie_case()
    assert aupro([mask], [score], fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-12)


def test_defect_free_images_count_in_fpr() -> None:
    # The tie case plus a defect-free image scoring 0.95, 0, 0, 0: now 8 defect-free pixels.
    # Curve: (1/8, 0) [t=0.95] -> (1/8, 0.5) [t=0.9] -> (3/8, 1) [t=0.5] -> (5/8, 1) -> (1, 1).
    # PRO at 0.3 = 0.5 + 0.5 * (0.3 - 0.125) / 0.25 = 0.85; area = 0.5 * (0.5 + 0.85) * 0.175
    # = 0.118125; AU-PRO = 0.118125 / 0.3 = 0.39375 (0.65 without the defect-free image).
    mask, score = _tie_case()
    free_mask = np.zeros((2, 2), dtype=bool)
    free_map = np.array([[0.95, 0.0], [0.0, 0.0]], dtype=np.float32)
    assert aupro([mask, free_mask], [score, free_map]) == pytest.approx(0.39375, abs=1e-12)


def test_perfect_map_scores_one() -> None:
    masks, _ = _random_set(seed=3)
    maps = [np.where(m, 2.0, 0.5).astype(np.float32) for m in masks]
    result = pixel_metrics(masks, maps)
    assert result.aupro == 1.0
    assert result.pixel_auroc == 1.0
    assert result.pixel_f1_max == 1.0


def test_inverted_map_scores_zero() -> None:
    masks, _ = _random_set(seed=4)
    maps = [np.where(m, 0.0, 1.0) for m in masks]
    assert aupro(masks, maps) == 0.0
    assert pixel_auroc(masks, maps) == 0.0


# --- agreement with the per-pixel reference and with sklearn -----------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_pro_curve_matches_per_pixel_reference(seed: int) -> None:
    masks, maps = _random_set(seed)
    fprs, pros = pro_curve(masks, maps)
    ref_fprs, ref_pros = _reference_pro_curve(masks, maps)
    np.testing.assert_allclose(fprs, ref_fprs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(pros, ref_pros, rtol=0, atol=1e-12)
    for limit in (0.3, 0.05, 1.0):
        # The reduced curve inside aupro has the same area as the full official curve.
        expected = trapezoid(ref_fprs, ref_pros, x_max=limit) / limit
        assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("seed", range(5))
def test_pixel_auroc_and_f1_match_sklearn(seed: int) -> None:
    masks, maps = _random_set(seed)
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([s.ravel() for s in maps])
    assert len(np.unique(scores)) < scores.size  # the case must contain ties
    result = pixel_metrics(masks, maps)
    assert result.pixel_auroc == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    assert result.pixel_f1_max == pytest.approx(f1.max(), rel=1e-12)


def test_float64_maps_are_not_rounded_to_float32() -> None:
    # These two scores are equal in float32; rounding would turn a perfect ranking into a tie.
    mask = np.array([[True, False]])
    score = np.array([[1.0 + 1e-12, 1.0]])
    assert pixel_auroc([mask], [score]) == 1.0


def test_stacked_array_input() -> None:
    masks, maps = _random_set(seed=1)
    same = [(m[:5, :5], s[:5, :5]) for m, s in zip(masks, maps, strict=True)]
    stacked_masks = np.stack([m for m, _ in same])
    stacked_maps = np.stack([s for _, s in same])
    assert pixel_metrics(stacked_masks, stacked_maps) == pixel_metrics(
        [m for m, _ in same], [s for _, s in same]
    )


def test_truth_prepared_once_scores_many_map_sets_like_the_masks() -> None:
    masks, _ = _random_set(seed=3)
    truth = PixelTruth.from_masks(masks)
    rng = np.random.default_rng(0)
    for _ in range(3):
        maps = [rng.random(m.shape).astype(np.float32) + 0.3 * m for m in masks]
        assert pixel_metrics(truth, maps, 0.3) == pixel_metrics(masks, maps, 0.3)
        assert aupro(truth, maps) == aupro(masks, maps)
        assert pixel_auroc(truth, maps) == pixel_auroc(masks, maps)
    # Maps of one (N, H, W) array are read without a copy and give the same numbers as a list.
    square = [m[:5, :5] for m in masks]
    stacked = rng.random((len(square), 5, 5)).astype(np.float32)
    square_truth = PixelTruth.from_masks(square)
    assert pixel_metrics(square_truth, list(stacked)) == pixel_metrics(square, [s.copy() for s in stacked])


def test_evaluate_takes_a_prepared_truth() -> None:
    masks, maps = _random_set(seed=4)
    labels = [int(m.any()) for m in masks]
    scores = [float(s.max()) for s in maps]
    assert evaluate(labels, scores, PixelTruth.from_masks(masks), maps) == evaluate(
        labels, scores, masks, maps
    )
    wrong = [1 - label for label in labels]
    with pytest.raises(MaskError, match="labelled normal"):
        evaluate(wrong, scores, PixelTruth.from_masks(masks), maps)


def test_truth_checks_its_maps() -> None:
    masks, maps = _random_set(seed=5)
    truth = PixelTruth.from_masks(masks)
    with pytest.raises(MaskError, match="mask 2 has shape"):
        pixel_metrics(truth, [*maps[:2], maps[2][:-1], *maps[3:]])
    with pytest.raises(MaskError, match="masks but"):
        pixel_metrics(truth, maps[:-1])
    with pytest.raises(DataError, match="no defect pixel"):
        PixelTruth.from_masks([np.zeros((4, 4), bool)])
    with pytest.raises(MaskError, match="values other than 0 and 1"):
        PixelTruth.from_masks([np.full((4, 4), 255)])


def test_lattice_keeps_full_resolution_regions() -> None:
    # One U-shaped region: two bars in even columns joined through an odd row that the stride-2
    # lattice never sees, plus a one-pixel region at odd coordinates that the lattice misses.
    mask = np.zeros((9, 9), dtype=bool)
    mask[0:7, 2] = mask[0:7, 6] = True
    mask[7, 2:7] = True
    lone = np.zeros((9, 9), dtype=bool)
    lone[5, 5] = True
    truth = PixelTruth.from_masks([mask, lone], stride=2)
    assert truth.shapes == ((5, 5), (5, 5))
    assert truth.n_regions == 1  # the U once, the unsampled pixel not at all
    # Left bar fully detected, right bar not: half of the sampled region is covered.
    score = np.zeros((9, 9), dtype=np.float32)
    score[:, :4] = 1.0
    maps = [score[::2, ::2], np.zeros((5, 5), dtype=np.float32)]
    _, pros = pro_curve(truth, maps)
    assert pros[1] == pytest.approx(0.5)
    np.testing.assert_array_equal(
        PixelTruth.from_masks([mask, lone], stride=1).defect, np.concatenate([mask.ravel(), lone.ravel()])
    )
    with pytest.raises(DataError, match="stride"):
        PixelTruth.from_masks([mask], stride=0)


# --- trapezoid and errors ---------------------------------------------------------------------------


def test_trapezoid_matches_hand_values() -> None:
    assert trapezoid([0, 1, 2], [0, 1, 1]) == 1.5
    assert trapezoid([0, 1, 2], [0, 1, 1], x_max=0.5) == pytest.approx(0.125, abs=1e-15)
    # Repeated x: a vertical segment adds nothing.
    assert trapezoid([0, 0, 1], [0, 1, 1], x_max=1.0) == 1.0
    with pytest.raises(DataError):
        trapezoid([0, 1], [0, 1], x_max=2.0)
    with pytest.raises(DataError):
        trapezoid([1, 0], [0, 1])


def test_no_defect_region_is_an_error() -> None:
    masks = [np.zeros((4, 4), dtype=bool)]
    maps = [np.zeros((4, 4))]
    with pytest.raises(DataError, match="no defect pixel"):
        aupro(masks, maps)
    with pytest.raises(DataError, match="no defect pixel"):
        pixel_auroc(masks, maps)


def test_shape_mismatch_names_the_image() -> None:
    masks = [np.zeros((4, 4), dtype=bool), np.ones((4, 5), dtype=bool)]
    maps = [np.zeros((4, 4)), np.zeros((5, 4))]
    with pytest.raises(MaskError, match=r"mask 1 has shape \(4, 5\) but anomaly map 1 has shape \(5, 4\)"):
        pixel_metrics(masks, maps)


@pytest.mark.parametrize(
    ("masks", "maps", "error"),
    [
        ([np.ones((2, 2), dtype=np.uint8) * 255], [np.zeros((2, 2))], MaskError),
        ([np.ones((2, 2), dtype=bool)], [np.zeros((2, 2))], DataError),  # no defect-free pixel
        ([np.eye(2, dtype=bool)], [np.array([[np.nan, 0.0], [0.0, 0.0]])], DataError),
        ([np.eye(2, dtype=bool)], [np.zeros((2, 2))] * 2, MaskError),
        ([], [], DataError),
    ],
)
def test_bad_inputs_raise(masks: list[np.ndarray], maps: list[np.ndarray], error: type[Exception]) -> None:
    with pytest.raises(error):
        pixel_metrics(masks, maps)


def test_zero_one_integer_masks_are_accepted() -> None:
    mask, score = _tie_case()
    assert aupro([mask.astype(np.uint8)], [score]) == aupro([mask], [score])


@pytest.mark.parametrize("fpr_limit", [0.0, -0.1, 1.5])
def test_bad_fpr_limit(fpr_limit: float) -> None:
    mask, score = _tie_case()
    with pytest.raises(DataError, match="fpr_limit"):
        aupro([mask], [score], fpr_limit=fpr_limit)
