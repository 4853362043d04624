"""Which torch device a command runs on: checked once, before any work, with one clear sentence."""

from __future__ import annotations

import torch

from stratad.errors import StratadError


class DeviceError(StratadError):
    """An unknown device name, or a device this machine does not have."""


def resolve_device(name: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` when this machine has it; anything else raises :class:`DeviceError`."""
    text = str(name).strip().lower()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device {name!r}; use cpu or cuda (cuda:N for a given GPU)") from None
    if device.type == "cpu":
        return "cpu"
    if device.type != "cuda":
        raise DeviceError(f"device {name!r} is not supported; use cpu or cuda")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: this machine has no usable CUDA GPU; use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return str(device)


def loadable_device(saved: str, requested: str | None) -> str:
    """The device a saved model runs on: ``requested`` when given (checked), else the one it was
    fitted on if this machine has it, else the CPU (a model fitted on a GPU loads anywhere)."""
    if requested is not None:
        return resolve_device(requested)
    try:
        return resolve_device(saved)
    except DeviceError:
        return "cpu"
