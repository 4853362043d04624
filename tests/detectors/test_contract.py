"""What every built-in detector promises the rest of the library, checked across the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stratad.detectors import build_detector, list_detectors
from stratad.detectors.base import detector_class
from stratad.features import FeatureBatch

# Small enough for the defaults of every detector; PatchCore's coreset must not exceed the bank.
_PARAMS = {"patchcore": {"coreset_size": 40}}


def _features(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a": torch.randn(n, 12, 8, 8, generator=g),
        "b": torch.randn(n, 20, 4, 4, generator=g),
    }


@pytest.mark.parametrize("name", [n for n in list_detectors() if detector_class(n).accepts_float16])
def test_float16_features_give_the_float32_results(name: str) -> None:
    """The sweep hands its float16 cache straight to detectors that declare ``accepts_float16``."""
    train, test = _features(24, 0), _features(6, 1)
    half = {k: v.half() for k, v in train.items()}, {k: v.half() for k, v in test.items()}
    rounded = {k: v.float() for k, v in half[0].items()}, {k: v.float() for k, v in half[1].items()}
    params = _PARAMS.get(name, {})
    nodes = ["a"] if name in {"patchcore", "padim", "gde"} else ["a", "b"]

    def run(tr: dict[str, torch.Tensor], te: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray | None]:
        det = build_detector(name, **params)
        det.fit(FeatureBatch({n: tr[n] for n in nodes}, (32, 32)))
        scores = det.score(FeatureBatch({n: te[n] for n in nodes}, (32, 32)))
        return scores.image_scores, scores.maps

    from_half, from_float = run(*half), run(*rounded)
    np.testing.assert_array_equal(from_half[0], from_float[0])
    if from_float[1] is not None:
        assert from_half[1] is not None
        np.testing.assert_array_equal(from_half[1], from_float[1])


def test_float16_is_opt_in() -> None:
    """A detector registered elsewhere gets float32 from the sweep unless it says otherwise."""
    from stratad.detectors.base import Detector

    assert Detector.accepts_float16 is False
