"""One-file persistence: tensors in safetensors, everything else as JSON in its metadata.

Writes go to a temporary file in the target folder and are renamed into place, so a killed run
never leaves a half-written model behind.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from stratad.errors import ModelFileError, StratadError

#: Version of the model-file layout. Bump it whenever a saved config gains or changes a key, so an
#: older stratad refuses a newer file with "made by a newer stratad" instead of misreading it.
#: 2: pipeline config key ``bit_depth``; a digest of the tensors and metadata in the metadata.
FORMAT_VERSION = 2
_META_KEY = "stratad"
_DIGEST_KEY = "tensors_sha256"


def _umask() -> int:
    try:  # Linux reports it without changing it
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.stratad-"


def _remove_stale_temps(target: Path) -> None:
    """Temp files of ``target`` left by a save that was killed: their writer process is gone."""
    parent = target.parent if str(target.parent) else Path(".")
    for tmp in parent.glob(f"{glob.escape(_temp_prefix(target))}*.tmp"):
        pid_text = tmp.name[len(_temp_prefix(target)) :].split(".", 1)[0]
        try:
            os.kill(int(pid_text), 0)
            continue  # the writer still runs (a concurrent save): leave its file alone
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:  # alive, owned by someone else
            continue
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    The file gets the mode a plain ``open()`` would give (0644 under the usual umask), not
    ``mkstemp``'s 0600, so a model shared in a team folder stays readable; temp files of this target
    left by a killed save are removed first.
    """
    target = Path(path)
    if target.is_dir():
        raise ModelFileError(f"{target} is a folder; give a file name such as {target / 'model.stratad'}")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.exists():
        parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(target)}{os.getpid()}.", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_file(path: str | Path, example: str = "model.stratad") -> None:
    """Fail before long work when ``path`` cannot be written (a folder, or an unwritable location)."""
    target = Path(path)
    if target.is_dir():
        raise ModelFileError(f"{target} is a folder; give a file name such as {target / example}")
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelFileError(f"cannot write {target}: {exc.strerror or exc}") from None
    if not os.access(parent, os.W_OK):
        raise ModelFileError(f"cannot write {target}: {parent} is not writable")


def check_output_folder(path: str | Path) -> Path:
    """Create ``path`` if needed and fail before long work when files cannot be written into it."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise StratadError(f"{folder} is a file; --out needs a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StratadError(f"cannot create {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StratadError(f"cannot write into {folder}: permission denied")
    return folder


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors`` (sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def file_digest(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> str:
    """SHA-256 over the tensors and the metadata (all but the digest itself): a flipped byte anywhere
    in a model file is found at load time instead of silently changing a score."""
    body = {k: v for k, v in meta.items() if k != _DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{tensors_digest(tensors)}|{text}".encode()).hexdigest()


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    payload = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    body = {"format_version": FORMAT_VERSION, **meta}
    header = {_META_KEY: json.dumps({**body, _DIGEST_KEY: file_digest(payload, body)})}
    atomic_write(path, lambda tmp: save_file(payload, tmp, metadata=header))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a stratad file; anything unusable is one :class:`ModelFileError`."""
    source = Path(path)
    if not source.is_file():
        raise ModelFileError(f"model file not found: {source}")
    try:
        from safetensors import safe_open

        with safe_open(str(source), framework="pt") as handle:
            header = handle.metadata() or {}
        tensors = load_file(str(source))
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError) as exc:
        raise ModelFileError(f"{source} is not a stratad model file ({_short(exc)})") from None
    if _META_KEY not in header:
        raise ModelFileError(f"{source} is not a stratad model file (no stratad metadata)")
    try:
        meta = json.loads(header[_META_KEY])
    except (json.JSONDecodeError, RecursionError):
        raise ModelFileError(f"{source} is damaged: its stratad metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{source} is damaged: its stratad metadata is not a JSON object")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelFileError(f"{source} is damaged: no valid format_version in its metadata")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{source} was made by a newer stratad (file format {version}; this one reads up to "
            f"{FORMAT_VERSION}): upgrade stratad"
        )
    if version < 1:
        raise ModelFileError(f"{source} has an unknown file format version {version}")
    if version >= 2 and meta.get(_DIGEST_KEY) != file_digest(tensors, meta):
        raise ModelFileError(f"{source} is damaged: its content does not match the digest written with it")
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelFileError(f"{source} is damaged: tensor {name} holds non-finite values")
    return tensors, meta


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def write_resume(path: Path, payload: Mapping[str, Any]) -> None:
    """The training state of a long run (``adapt``, ``pretrain``), replaced atomically each epoch."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(payload), tmp)
    os.replace(tmp, path)


def read_resume(path: Path | None, stamp: Mapping[str, Any], what: str) -> dict[str, Any] | None:
    """The state :func:`write_resume` left at ``path`` (None when there is none); a state of another
    run (``stamp`` differs) is an error naming ``what`` it holds."""
    if path is None or not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if saved.get("stamp") != stamp:
        raise StratadError(f"{path} holds {what} with other settings or data; remove it or use another --out")
    return dict(saved)
