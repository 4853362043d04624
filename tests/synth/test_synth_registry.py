"""Registry, configs and input validation of the synthetic-defect generators."""

from __future__ import annotations

import numpy as np
import pytest

from stratad.errors import DataError, StratadError
from stratad.synth import (
    CloneMode,
    CutPasteConfig,
    CutPasteDefect,
    DefectKind,
    NSAConfig,
    NSADefect,
    SimpleConfig,
    SimpleDefect,
    build_defect,
    defect_class,
    list_defect_kinds,
)


def test_every_kind_is_registered() -> None:
    assert list_defect_kinds() == sorted(kind.value for kind in DefectKind) == ["cutpaste", "nsa", "simple"]
    assert defect_class("simple") is SimpleDefect
    assert defect_class(DefectKind.cutpaste) is CutPasteDefect
    assert defect_class(" NSA ") is NSADefect


def test_build_uses_defaults_and_overrides() -> None:
    gen = build_defect("simple")
    assert isinstance(gen, SimpleDefect)
    assert gen.config == SimpleConfig()
    gen = build_defect(DefectKind.cutpaste, area_fraction_range=(0.05, 0.1))
    assert gen.config == CutPasteConfig(area_fraction_range=(0.05, 0.1))
    gen = build_defect("nsa", NSAConfig(max_patches=1), change_threshold=5)
    assert gen.config.max_patches == 1
    assert gen.config.change_threshold == 5.0


def test_cli_strings_are_coerced() -> None:
    gen = build_defect("nsa", **{"patch-side-fraction-range": "0.2, 0.3", "foreground": "off"})
    assert gen.config.patch_side_fraction_range == (0.2, 0.3)
    assert gen.config.foreground is False
    assert build_defect("nsa", clone_mode="mixed").config.clone_mode is CloneMode.mixed
    assert build_defect("nsa", max_patches="2").config.max_patches == 2


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("nope", {}),
        ("simple", {"size": 3}),
        ("simple", {"side_fraction_range": (0.3, 0.1)}),
        ("simple", {"side_fraction_range": (0.0, 0.1)}),
        ("simple", {"side_fraction_range": (0.1, 1.5)}),
        ("simple", {"side_fraction_range": (0.1, 0.2, 0.3)}),
        ("simple", {"side_fraction_range": "abc"}),
        ("cutpaste", {"area_fraction_range": (0.2, 0.1)}),
        ("cutpaste", {"aspect_ratio_range": (-1.0, 2.0)}),
        ("cutpaste", {"color_jitter": 2.0}),
        ("cutpaste", {"color_jitter": "strong"}),
        ("nsa", {"max_patches": 0}),
        ("nsa", {"max_patches": 1.5}),
        ("nsa", {"scale_range": (1.3, 0.7)}),
        ("nsa", {"clone_mode": "weird"}),
        ("nsa", {"foreground": "maybe"}),
        ("nsa", {"min_foreground_fraction": 1.5}),
        ("nsa", {"change_threshold": -1}),
        ("nsa", {"change_window": 4}),
        ("nsa", {"min_defect_area": 0}),
        ("nsa", {"max_attempts": 0}),
    ],
)
def test_invalid_options_raise(kind: str, params: dict) -> None:
    with pytest.raises(DataError) as info:
        build_defect(kind, **params)
    assert "\n" not in str(info.value)


def test_invalid_config_object_raises() -> None:
    with pytest.raises(DataError):
        SimpleConfig(side_fraction_range=(0.5, 0.2))
    with pytest.raises(StratadError):
        build_defect("simple", CutPasteConfig())


@pytest.mark.parametrize("kind", list(DefectKind))
@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((64, 64, 3), dtype=np.float32),
        np.zeros((64, 64), dtype=np.uint8),
        np.zeros((64, 64, 4), dtype=np.uint8),
        np.zeros((0, 64, 3), dtype=np.uint8),
        [[0, 0, 0]],
    ],
    ids=["float", "2d", "rgba", "empty", "list"],
)
def test_invalid_images_raise(kind: DefectKind, bad: object, textures: list[np.ndarray]) -> None:
    gen = build_defect(kind)
    rng = np.random.default_rng(0)
    with pytest.raises(DataError):
        gen(bad, None, rng)  # type: ignore[arg-type]
    with pytest.raises(DataError):
        gen(textures[0], bad, rng)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", list(DefectKind))
def test_rng_must_be_a_generator(kind: DefectKind, textures: list[np.ndarray]) -> None:
    with pytest.raises(DataError):
        build_defect(kind)(textures[0], None, 0)  # type: ignore[arg-type]


def test_nsa_rejects_tiny_images() -> None:
    with pytest.raises(DataError):
        build_defect("nsa")(np.full((8, 8, 3), 100, dtype=np.uint8), None, np.random.default_rng(0))
