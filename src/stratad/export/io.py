"""One-file persistence: tensors in safetensors, everything else as JSON in its metadata.

Writes go to a temporary file in the target folder and are renamed into place, so a killed run
never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from stratad.errors import ModelFileError

FORMAT_VERSION = 1
_META_KEY = "stratad"


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    target = Path(path)
    if target.is_dir():
        raise ModelFileError(f"{target} is a folder; give a file name such as {target / 'model.stratad'}")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.exists():
        parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_file(path: str | Path) -> None:
    """Fail before long work when ``path`` cannot be written (a folder, or an unwritable location)."""
    target = Path(path)
    if target.is_dir():
        raise ModelFileError(f"{target} is a folder; give a file name such as {target / 'model.stratad'}")
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelFileError(f"cannot write {target}: {exc.strerror or exc}") from None
    if not os.access(parent, os.W_OK):
        raise ModelFileError(f"cannot write {target}: {parent} is not writable")


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    payload = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = {_META_KEY: json.dumps({"format_version": FORMAT_VERSION, **meta})}
    atomic_write(path, lambda tmp: save_file(payload, tmp, metadata=header))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    source = Path(path)
    if not source.is_file():
        raise ModelFileError(f"model file not found: {source}")
    try:
        from safetensors import safe_open

        with safe_open(str(source), framework="pt") as handle:
            header = handle.metadata() or {}
        tensors = load_file(str(source))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{source} is not a stratad model file ({exc})") from None
    if _META_KEY not in header:
        raise ModelFileError(f"{source} is not a stratad model file (no stratad metadata)")
    meta = json.loads(header[_META_KEY])
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{source} has format version {meta.get('format_version')}, expected {FORMAT_VERSION}"
        )
    return tensors, meta
