"""The synthetic-defect contract, its registry and the input checks every generator shares.

A generator is configured by a frozen dataclass (hyper-parameters only) and called as
``generator(target, source, rng)``: ``target`` is the good image that receives the defect, ``source``
another good image of the same product that some kinds copy from (``None``: the target itself), and
``rng`` is the only source of randomness, so the same seed gives bit-identical output.
Images are uint8 RGB arrays ``(H, W, 3)``; masks are bool ``(H, W)``.
"""

from __future__ import annotations

import dataclasses
import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from stratad._options import coerce_options
from stratad.errors import DataError
from stratad.registry import Registry


class DefectKind(str, enum.Enum):
    """The synthetic defect kinds stratad ships."""

    simple = "simple"
    cutpaste = "cutpaste"
    nsa = "nsa"


@dataclass(frozen=True, eq=False)
class SyntheticDefect:
    """A defective image and the pixels its defect covers.

    ``target_index`` / ``source_index`` say which good images it was made from when it comes from
    :func:`~stratad.synth.make_synthetic_set` (``None`` otherwise, or when no source was used).
    """

    image: np.ndarray
    mask: np.ndarray
    target_index: int | None = None
    source_index: int | None = None


@dataclass(frozen=True)
class DefectConfig:
    """Base of every generator's hyper-parameter dataclass; invalid values raise on construction."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`DataError` for impossible hyper-parameters (override when needed)."""


class DefectGenerator(ABC):
    """Callable ``(target, source, rng) -> SyntheticDefect``; subclasses implement :meth:`_generate`."""

    kind: ClassVar[DefectKind]
    config_class: ClassVar[type[DefectConfig]] = DefectConfig
    #: smallest image side (pixels) the method can work on
    min_image_side: ClassVar[int] = 1

    def __init__(self, config: DefectConfig | None = None, **params: Any) -> None:
        base = config if config is not None else self.config_class()
        if not isinstance(base, self.config_class):
            raise DataError(
                f"the {self.kind.value} defect expects a {self.config_class.__name__}, "
                f"got {type(base).__name__}"
            )
        self.config = dataclasses.replace(base, **coerce_params(self.config_class, params, self.kind))

    def __call__(
        self, target: np.ndarray, source: np.ndarray | None, rng: np.random.Generator
    ) -> SyntheticDefect:
        check_image(target, "target", self.min_image_side)
        if source is not None:
            check_image(source, "source", self.min_image_side)
        if not isinstance(rng, np.random.Generator):
            raise DataError(
                f"rng must be a numpy.random.Generator (e.g. numpy.random.default_rng(seed)), "
                f"got {type(rng).__name__}"
            )
        return self._generate(target, source, rng)

    @abstractmethod
    def _generate(
        self, target: np.ndarray, source: np.ndarray | None, rng: np.random.Generator
    ) -> SyntheticDefect: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


def check_image(image: object, name: str, min_side: int = 1) -> np.ndarray:
    """Return ``image`` if it is a uint8 ``(H, W, 3)`` array with both sides >= ``min_side``."""
    if not isinstance(image, np.ndarray):
        raise DataError(f"{name} must be a uint8 numpy array of shape (H, W, 3), got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(
            f"{name} must be a uint8 array of shape (H, W, 3) (replicate grayscale to 3 channels), "
            f"got {image.dtype} {image.shape}"
        )
    if min(image.shape[:2]) < min_side:
        raise DataError(f"{name} is {image.shape[0]}x{image.shape[1]}; this defect needs sides >= {min_side}")
    return image


def pixel_length(length: float, limit: int) -> int:
    """Round a sampled length to whole pixels within ``[1, limit]``."""
    return int(min(max(round(length), 1), limit))


#: The selection study's defect rectangles (Heckler & König, appendix): each side 10-50 % of the
#: image's side, the rectangle at least 20 px from every border.
PAPER_SIDE_FRACTIONS = (0.1, 0.5)
PAPER_BORDER_PX = 20


def place_rectangle(
    rng: np.random.Generator,
    height: int,
    width: int,
    side_fraction_range: tuple[float, float],
    border_px: int,
    max_size: tuple[int, int] | None = None,
) -> tuple[int, int, int, int]:
    """``(y, x, box_h, box_w)`` of a rectangle whose sides are uniform fractions of the image's
    height and width (drawn independently) and that keeps ``border_px`` from every border. On an
    image too small for that margin around the drawn box, the margin shrinks to what is left on
    each side (so a 64 px image still gets defects). ``max_size`` caps the box (a smaller source)."""
    box_h = pixel_length(rng.uniform(*side_fraction_range) * height, height)
    box_w = pixel_length(rng.uniform(*side_fraction_range) * width, width)
    if max_size is not None:
        box_h, box_w = min(box_h, max_size[0]), min(box_w, max_size[1])
    y, x = margined_position(rng, height, width, box_h, box_w, border_px)
    return y, x, box_h, box_w


def margined_position(
    rng: np.random.Generator, height: int, width: int, box_h: int, box_w: int, border_px: int
) -> tuple[int, int]:
    """Top-left corner of a ``box_h x box_w`` box at least ``border_px`` from every border (less
    where the image leaves less room: the margin shrinks to what is left on each side)."""
    margin_y = min(border_px, (height - box_h) // 2)
    margin_x = min(border_px, (width - box_w) // 2)
    y = int(rng.integers(margin_y, height - box_h - margin_y + 1))
    x = int(rng.integers(margin_x, width - box_w - margin_x + 1))
    return y, x


# -- small validation helpers for configs --
def check_range(name: str, value: tuple[float, float], low: float, high: float | None) -> None:
    """``value`` must be ``(lo, hi)`` with ``low < lo <= hi`` (and ``hi <= high`` when given)."""
    if len(value) != 2:
        raise DataError(f"option {name} must be a (min, max) pair, got {value!r}")
    lo, hi = value
    upper = "" if high is None else f" <= {high}"
    if not (lo > low and lo <= hi and (high is None or hi <= high)):
        raise DataError(f"option {name} must satisfy {low} < min <= max{upper}, got {value!r}")


# -- registry --
G = TypeVar("G", bound=type[DefectGenerator])


def _load_builtin_defects() -> None:
    import stratad.synth  # noqa: F401  (registers the built-in generators on import)


DEFECTS: Registry[type[DefectGenerator]] = Registry("defect kind", DataError, _load_builtin_defects)


def register_defect(cls: G) -> G:
    """Class decorator: make a generator available by its ``kind``."""
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, DefectKind):
        raise TypeError(f"{cls.__name__}.kind must be a DefectKind")
    DEFECTS.register(kind.value, cls)
    return cls


def list_defect_kinds(pattern: str | None = None) -> list[str]:
    """Names accepted by :func:`build_defect`."""
    return DEFECTS.names(pattern)


def defect_class(kind: str | DefectKind) -> type[DefectGenerator]:
    return DEFECTS.get(kind.value if isinstance(kind, DefectKind) else str(kind).strip().lower())


def defect_kinds(defects: str) -> list[str]:
    """The kinds of a defect spec: one kind (``nsa``) or a mixture (``simple,cutpaste,nsa``), each
    checked; repeated kinds are an error."""
    kinds = [k.strip().lower() for k in str(defects).split(",") if k.strip()]
    if not kinds:
        raise DataError(f"no defect kind in {defects!r}")
    if len(set(kinds)) != len(kinds):
        raise DataError(f"a defect kind appears twice in {defects!r}")
    for kind in kinds:
        defect_class(kind)  # an unknown kind fails here, naming the close matches
    return kinds


def params_for(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The options of ``params`` that the ``kind`` accepts (a mixture's options go to their kinds)."""
    names = {f.name for f in dataclasses.fields(defect_class(kind).config_class)}
    return {k: v for k, v in params.items() if k in names}


def build_defect(
    kind: str | DefectKind, config: DefectConfig | None = None, **params: Any
) -> DefectGenerator:
    """Build a generator: ``build_defect("cutpaste", area_fraction_range=(0.02, 0.1))``."""
    return defect_class(kind)(config, **params)


def coerce_params(
    config_class: type[DefectConfig], params: Mapping[str, Any], kind: DefectKind
) -> dict[str, Any]:
    return coerce_options(config_class, params, DataError, f"the {kind.value} defect")
