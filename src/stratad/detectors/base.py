"""The detector contract, its registry and the state (de)serialisation every detector shares.

A detector is configured by a dataclass (hyper-parameters only), learns state into attributes
ending in ``_`` in :meth:`Detector.fit`, and exposes that state as a flat dict of tensors so that a
pipeline file can hold it without pickling code.
"""

from __future__ import annotations

import dataclasses
import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from stratad._options import check_bounds, coerce_options
from stratad.backbones.stages import NodeRule
from stratad.errors import DetectorError
from stratad.features.types import FeatureBatch
from stratad.registry import Registry


@dataclass
class Scores:
    """Image scores ``(N,)`` and, for detectors that localise, maps ``(N, h, w)`` at feature resolution.

    ``maps`` are raw (not upsampled, not smoothed); the pipeline upsamples and smooths them.
    """

    image_scores: np.ndarray
    maps: np.ndarray | None = None


@dataclass
class DetectorConfig:
    """Base of every detector's hyper-parameter dataclass."""


class Detector(ABC):
    """scikit-learn style detector on a :class:`FeatureBatch`."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[DetectorConfig]] = DetectorConfig
    #: whether :meth:`score` returns maps (pixel metrics are only reported when it does)
    localizes: ClassVar[bool] = True
    #: nodes used when the user gives none, stated by stride on the backbone's published stages
    default_nodes: ClassVar[NodeRule] = NodeRule()
    #: cheaper options a feature-selection sweep fits every candidate node with, unless the sweep is
    #: ``exact`` (options the user sets still win); a detector adds one only where a measurement
    #: showed the node ranking does not suffer
    sweep_params: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    #: whether fit / score take float16 features as they are (converting internally, results equal
    #: to float32 input); the sweep then hands over its float16 cache without a float32 copy per node
    accepts_float16: ClassVar[bool] = False

    def __init__(self, config: DetectorConfig | None = None, **params: Any) -> None:
        base = config if config is not None else self.config_class()
        if not isinstance(base, self.config_class):
            raise DetectorError(
                f"{self.name} expects a {self.config_class.__name__}, got {type(base).__name__}"
            )
        self.config = (
            dataclasses.replace(base, **coerce_params(self.config_class, params)) if params else base
        )
        check_bounds(self.config, DetectorError, f"the {self.name} detector")
        self.validate_config()

    def validate_config(self) -> None:  # noqa: B027  (optional hook, not abstract)
        """Raise :class:`DetectorError` for impossible hyper-parameters (override when needed)."""

    @abstractmethod
    def fit(self, train: FeatureBatch) -> Detector: ...

    @abstractmethod
    def score(self, test: FeatureBatch) -> Scores: ...

    def module(self, nodes: Sequence[str]) -> nn.Module:
        """The fitted detector as an inference ``nn.Module`` with its state in buffers:
        ``forward(features: dict[node, tensor]) -> (image scores (N,), raw maps (N, h, w) or None)``,
        the nodes in the order they were fitted (:mod:`stratad.detectors.modules`)."""
        raise DetectorError(f"the {self.name} detector has no inference module (it cannot be exported)")

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Learned state as tensors; raise :class:`DetectorError` before fit."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None: ...

    # -- persistence of a bare detector (pipelines embed the same state in their own file) --
    def save(self, path: str | Path) -> None:
        from stratad.export.io import save_tensors

        meta = {"kind": "detector", "detector": self.name, "config": config_to_dict(self.config)}
        save_tensors(path, self.state_dict(), meta)

    @classmethod
    def load(cls, path: str | Path) -> Detector:
        from stratad.export.io import load_tensors

        tensors, meta = load_tensors(path)
        if meta.get("kind") != "detector":
            raise DetectorError(f"{path} holds no bare detector (kind={meta.get('kind')!r})")
        return detector_from_state(meta["detector"], meta["config"], tensors)

    def _check_fitted(self, attribute: str) -> None:
        if getattr(self, attribute, None) is None:
            raise DetectorError(f"the {self.name} detector is not fitted yet: call fit() first")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


D = TypeVar("D", bound=type[Detector])


def _load_builtin_detectors() -> None:
    import stratad.detectors  # noqa: F401  (registers the built-in detectors on import)


DETECTORS: Registry[type[Detector]] = Registry("detector", DetectorError, _load_builtin_detectors)


def register_detector(cls: D) -> D:
    """Class decorator: make a detector available by its ``name``."""
    DETECTORS.register(cls.name, cls)
    return cls


def list_detectors(pattern: str | None = None) -> list[str]:
    return DETECTORS.names(pattern)


def detector_class(name: str) -> type[Detector]:
    return DETECTORS.get(name)


def build_detector(name: str, **params: Any) -> Detector:
    return detector_class(name)(**params)


def build_seeded_detector(name: str, params: Mapping[str, Any], seed: int) -> Detector:
    """Build a detector, passing the run's ``seed`` to detectors that draw random numbers unless the
    user set their ``seed`` option explicitly."""
    cls = detector_class(name)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    return cls(**({"seed": seed, **params} if "seed" in fields else dict(params)))


def state_tensor(state: Mapping[str, torch.Tensor], key: str, ndim: int, owner: str) -> torch.Tensor:
    """``state[key]`` checked to be a non-empty ``ndim``-D tensor (a loaded file may hold anything)."""
    if key not in state:
        raise DetectorError(f"{owner} state has no {key}")
    tensor = state[key]
    if tensor.ndim != ndim or tensor.numel() == 0:
        raise DetectorError(
            f"{owner} state {key} has shape {tuple(tensor.shape)}; expected {ndim} non-empty axes"
        )
    return tensor


def detector_from_state(name: str, config: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> Detector:
    cls = detector_class(name)
    det = cls(cls.config_class(**coerce_params(cls.config_class, dict(config))))
    det.load_state_dict(state)
    return det


# -- hyper-parameter coercion: CLI strings and JSON values -> typed dataclass fields --
def config_to_dict(config: DetectorConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        out[f.name] = v.value if isinstance(v, enum.Enum) else (list(v) if isinstance(v, tuple) else v)
    return out


def coerce_params(config_class: type[DetectorConfig], params: Mapping[str, Any]) -> dict[str, Any]:
    name = next((n for n in DETECTORS.names() if DETECTORS.get(n).config_class is config_class), "this")
    return coerce_options(config_class, params, DetectorError, f"the {name} detector")


def describe_detectors() -> list[str]:
    """One line per registered detector: name, what it scores, and its options with their defaults."""
    lines = []
    for name in list_detectors():
        cls = detector_class(name)
        options = ", ".join(f"{k}={v}" for k, v in config_to_dict(cls.config_class()).items())
        lines.append(f"{name} ({'image + pixel' if cls.localizes else 'image only'}): {options}")
    return lines
