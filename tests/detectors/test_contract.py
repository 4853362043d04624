"""What every registered detector promises the rest of the library, checked once across the registry
(scikit-learn's ``parametrize_with_checks``): method-specific numerics stay in the per-detector files.

Each registered detector is tried in every configuration of :data:`CONFIGS` (one default
configuration when it has none); a detector registered without an entry here is still checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stratad.detectors import build_detector, list_detectors
from stratad.detectors.base import Detector, detector_class
from stratad.errors import DetectorError
from stratad.features import FeatureBatch

# Options that fit the tiny features below; extra configurations where a detector has modes.
CONFIGS: dict[str, list[dict[str, object]]] = {
    "patchcore": [
        {"coreset_size": 60},
        {"coreset_fraction": 0.25, "reweight_neighbours": 3},
        {"coreset_size": 60, "embedding": "unfold", "node_dim": 64, "target_dim": 48},
    ],
    "padim": [{"n_features": 10}],
    "gaussian": [{"variant": v} for v in ("mvg", "l2", "sed", "pca", "npca")],
    "dn2": [{}],
    "spade": [{"image_neighbours": 4, "combine": "sum"}, {"image_neighbours": 4, "combine": "concat"}],
    "gde": [{}],
    "fastflow": [{"steps": 60, "flow_steps": 4, "batch_size": 8}],
    "ast": [{"epochs": 15, "student_hidden": 32, "student_blocks": 2, "teacher_hidden": 16}],
    "simplenet": [
        {"epochs": 40, "hidden": 32, "node_dim": 64, "target_dim": 64},
        {"epochs": 40, "hidden": 32, "embedding": "average"},
    ],
}
CASES = [(name, params) for name in list_detectors() for params in CONFIGS.get(name, [{}])]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in params.items()) or 'default'}" for name, params in CASES]
DEFECT = (2, 5, 6)  # image, row, column of the planted defect on the 8 x 8 grid


def _features(n: int, seed: int, defect: bool = False) -> FeatureBatch:
    """Two spatial nodes (8 x 8 and 4 x 4) whose channels share a latent; optionally a strong local
    defect in image 2 at (5, 6) (and the matching cell of the coarse node)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(12, 4, generator=torch.Generator().manual_seed(99))
    latent = torch.randn(n, 4, 8, 8, generator=g)
    a = torch.einsum("cl,nlhw->nchw", mix, latent) * 0.1 + 0.05 * torch.randn(n, 12, 8, 8, generator=g)
    b = torch.nn.functional.avg_pool2d(a[:, :8], 2) + 0.05 * torch.randn(n, 8, 4, 4, generator=g)
    if defect:
        image, row, col = DEFECT
        a[image, :, row, col] += 3.0
        b[image, :, row // 2, col // 2] += 1.5
    return FeatureBatch({"a": a, "b": b}, (64, 64))


def _build(name: str, params: dict[str, object], seed: int = 0) -> Detector:
    cls = detector_class(name)
    fields = {f for f in cls.config_class.__dataclass_fields__}
    return build_detector(name, **({"seed": seed} if "seed" in fields else {}), **params)


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_fit_returns_self_and_unfitted_refuses(name: str, params: dict[str, object]) -> None:
    det = _build(name, params)
    for use in (lambda: det.score(_features(2, 1)), det.state_dict, lambda: det.module(["a", "b"])):
        with pytest.raises(DetectorError):
            use()
    assert det.fit(_features(24, 0)) is det


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_planted_defect_is_separated_and_localised(name: str, params: dict[str, object]) -> None:
    det = _build(name, params).fit(_features(24, 0))
    scores = det.score(_features(4, 1, defect=True))
    assert scores.image_scores.shape == (4,) and scores.image_scores.dtype == np.float32
    assert int(np.argmax(scores.image_scores)) == DEFECT[0]
    if det.localizes:
        assert scores.maps is not None and scores.maps.shape == (4, 8, 8)  # the first node's grid
        row, col = np.unravel_index(np.argmax(scores.maps[DEFECT[0]]), (8, 8))
        assert abs(row - DEFECT[1]) <= 1 and abs(col - DEFECT[2]) <= 1
    else:
        assert scores.maps is None


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_save_load_gives_identical_scores(name: str, params: dict[str, object], tmp_path: Path) -> None:
    det = _build(name, params).fit(_features(24, 0))
    det.save(tmp_path / "d.stratad")
    again = Detector.load(tmp_path / "d.stratad")
    test = _features(3, 2)
    a, b = det.score(test), again.score(test)
    np.testing.assert_array_equal(a.image_scores, b.image_scores)
    assert (a.maps is None) == (b.maps is None)
    if a.maps is not None:
        np.testing.assert_array_equal(a.maps, b.maps)


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_same_seed_gives_bit_identical_scores(name: str, params: dict[str, object]) -> None:
    test = _features(3, 2)
    a = _build(name, params, seed=5).fit(_features(24, 0)).score(test)
    b = _build(name, params, seed=5).fit(_features(24, 0)).score(test)
    np.testing.assert_array_equal(a.image_scores, b.image_scores)
    if a.maps is not None:
        np.testing.assert_array_equal(a.maps, b.maps)


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_inference_module_is_the_scoring_and_its_traced_form_matches(
    name: str, params: dict[str, object]
) -> None:
    det = _build(name, params).fit(_features(24, 0))
    test = _features(4, 1, defect=True)
    module = det.module(test.nodes)
    assert isinstance(module, torch.nn.Module)
    assert all(not p.requires_grad for p in module.parameters())  # state lives in buffers
    expected = det.score(test)
    scores, maps = module(dict(test.features))  # in Python: exactly the detector's scoring
    np.testing.assert_array_equal(scores.numpy(), expected.image_scores)
    assert (maps is None) == (expected.maps is None)
    if maps is not None:
        np.testing.assert_array_equal(maps.numpy(), expected.maps)
    try:  # the form that is exported: plain tensor algebra on the buffers
        with torch.no_grad():
            scores, maps = module.traced(dict(test.features))
    except DetectorError as exc:
        assert "cannot be exported" in str(exc)
        return
    scale = float(np.abs(expected.image_scores).max())
    np.testing.assert_allclose(scores.numpy(), expected.image_scores, atol=1e-5 * scale, rtol=0)
    if expected.maps is not None:
        assert maps is not None
        map_scale = float(np.abs(expected.maps).max())
        np.testing.assert_allclose(maps.numpy(), expected.maps, atol=1e-5 * map_scale, rtol=0)
    else:
        assert maps is None


@pytest.mark.parametrize("name", [n for n in list_detectors() if detector_class(n).accepts_float16])
def test_float16_features_give_the_float32_results(name: str) -> None:
    """The sweep hands its float16 cache straight to detectors that declare ``accepts_float16``."""
    train, test = _features(24, 0), _features(6, 1)
    half = train.features, test.features
    half = {k: v.half() for k, v in half[0].items()}, {k: v.half() for k, v in half[1].items()}
    rounded = {k: v.float() for k, v in half[0].items()}, {k: v.float() for k, v in half[1].items()}
    params = CONFIGS.get(name, [{}])[0]

    def run(tr: dict[str, torch.Tensor], te: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray | None]:
        det = _build(name, params).fit(FeatureBatch(tr, (64, 64)))
        scores = det.score(FeatureBatch(te, (64, 64)))
        return scores.image_scores, scores.maps

    from_half, from_float = run(*half), run(*rounded)
    np.testing.assert_array_equal(from_half[0], from_float[0])
    if from_float[1] is not None:
        assert from_half[1] is not None
        np.testing.assert_array_equal(from_half[1], from_float[1])


def test_float16_is_opt_in() -> None:
    """A detector registered elsewhere gets float32 from the sweep unless it says otherwise."""
    assert Detector.accepts_float16 is False
