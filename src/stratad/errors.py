"""Every error stratad raises on bad input; the CLI prints the message alone and exits non-zero."""

from __future__ import annotations


class StratadError(Exception):
    """Base class: the message is one actionable sentence meant for the user."""


class DataError(StratadError):
    """A path, folder, image or mask cannot be used."""


class ImageReadError(DataError):
    """An image file is missing, corrupt or not an image."""


class MaskError(DataError):
    """A mask is unreadable or does not match its image."""


class BackboneError(StratadError):
    """Unknown backbone or unusable weights."""


class WeightsNotFoundError(BackboneError):
    """Weights are requested but no local file holds them."""


class NodeError(StratadError):
    """A requested graph node does not exist in the backbone."""


class DetectorError(StratadError):
    """Unknown detector, bad hyper-parameter, or a detector used before fit."""


class ModelFileError(StratadError):
    """A saved pipeline file is missing, corrupt or of an unknown version."""


class ShapeError(StratadError, ValueError):
    """An array or tensor of the wrong shape, dtype or size handed to the library (also a ValueError)."""


class RegistryError(StratadError, ValueError):
    """A backbone, detector or defect kind registered twice or without a name (also a ValueError)."""
