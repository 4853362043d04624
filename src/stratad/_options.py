"""Typed hyper-parameters from loose values: CLI strings (``-p key=value``) and JSON.

Detector and synthetic-defect configs are dataclasses; this turns ``{"coreset_size": "1000"}`` into
``{"coreset_size": 1000}`` by the field's type hint, with one-sentence errors for the user.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

import numpy as np

from stratad.errors import StratadError

_BOUNDS = "stratad_bounds"


def bounded(
    default: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False
) -> Any:
    """A dataclass field whose value must lie in [low, high] (``(low, high]`` with ``low_open``);
    ``None`` stays allowed for optional fields. The constraint is declared once, beside the default,
    and checked by :func:`check_bounds` when options come in (``-p key=value``, a model file)."""
    return dataclasses.field(default=default, metadata={_BOUNDS: (low, high, low_open)})


def check_bounds(config: Any, error: type[StratadError], owner: str) -> None:
    """Raise ``error`` naming the first field of the dataclass instance ``config`` out of its bounds."""
    for f in dataclasses.fields(config):
        if _BOUNDS not in f.metadata:
            continue
        value = getattr(config, f.name)
        if value is None:
            continue
        low, high, low_open = f.metadata[_BOUNDS]
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and value > high
        if too_low or too_high:
            left = "(" if low_open else "["
            span = f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
            raise error(f"option {f.name} of {owner} must lie in {span}, got {value}")


def coerce_options(
    config_class: type, params: Mapping[str, Any], error: type[StratadError], owner: str
) -> dict[str, Any]:
    """Check names against the dataclass ``config_class`` and convert values to the field types."""
    hints = typing.get_type_hints(config_class)
    fields = {f.name for f in dataclasses.fields(config_class)}
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = key.replace("-", "_") if isinstance(key, str) else key
        if name not in fields:
            close = difflib.get_close_matches(str(name), sorted(fields), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise error(f"unknown option {key!r} for {owner}{hint}; options: {', '.join(sorted(fields))}")
        out[name] = _coerce(hints[name], value, name, error)
    return out


def _coerce(tp: Any, value: Any, name: str, error: type[StratadError]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", ""))
        if is_none and type(None) in args:
            return None
        failures: list[StratadError] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, name, error)
            except StratadError as exc:
                failures.append(exc)
        if len(failures) == 1:  # one real type (``float | None``): its own message says why
            raise failures[0]
        raise error(f"option {name}: cannot use {value!r}")
    if origin is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise error(f"option {name}: {value!r} is not a list")
        inner = args[0] if args else str
        return [_coerce(inner, v.strip() if isinstance(v, str) else v, name, error) for v in items]
    if origin is dict:
        if not isinstance(value, dict):
            raise error(f"option {name}: {value!r} is not a mapping")
        return dict(value)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise error(f"option {name}: {value!r} is not a sequence like '0.1,0.3'")
        inner = args[0] if args else str
        return tuple(_coerce(inner, v.strip() if isinstance(v, str) else v, name, error) for v in items)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value.value if isinstance(value, enum.Enum) else value)
        except ValueError:
            choices = ", ".join(str(m.value) for m in tp)
            raise error(f"option {name}: {value!r} is not one of {choices}") from None
    if tp is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise error(f"option {name}: {value!r} is not a valid bool")
    if tp is int:
        try:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, bool) or not float(number).is_integer():
                raise ValueError(value)
            return int(number)
        except (TypeError, ValueError):
            raise error(f"option {name}: {value!r} is not a valid int") from None
    if tp is float:
        try:
            if isinstance(value, bool):
                raise TypeError(value)
            number = float(value)
        except (TypeError, ValueError):
            raise error(f"option {name}: {value!r} is not a valid float") from None
        if not math.isfinite(number):
            raise error(f"option {name}: {value!r} is not a finite number")
        return number
    if tp is str:
        if isinstance(value, (dict, list, tuple)):
            raise error(f"option {name}: {value!r} is not a text value")
        return str(value)
    return value
