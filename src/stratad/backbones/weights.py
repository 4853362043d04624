"""Reading weight files (never downloading them) and loading them strictly into a model."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from stratad.errors import BackboneError, WeightsNotFoundError

StateDict = dict[str, torch.Tensor]
KeyRemap = Callable[[StateDict], StateDict]

# Checkpoints written by training scripts often wrap the weights; these are the usual envelopes.
_NESTING_KEYS = ("state_dict", "model", "model_state_dict", "module")
# DataParallel / DistributedDataParallel and torch.compile prefix every key.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def hub_checkpoint_path(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url(url)`` caches the file (honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def require_hub_checkpoint(url: str, backbone_name: str) -> Path:
    path = hub_checkpoint_path(url)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"ImageNet weights for {backbone_name} are not in the torch hub cache: expected {path} "
            f"(the file of {url}); copy it there, or pass --weights PATH or --weights random."
        )
    return path


def read_state_dict(path: Path) -> StateDict:
    """Tensors of a ``.pth`` / ``.pt`` / ``.safetensors`` file, unwrapped and without wrapper prefixes."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own untyped errors on corrupt headers
            raise BackboneError(f"{path} is not a readable safetensors file ({error}).") from error
    else:
        try:
            # weights_only: a weights file must never be able to run code on load.
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise BackboneError(
                f"{path} holds more than tensors (a pickled model or optimizer?), which torch.load refuses "
                f"with weights_only=True; re-save it as torch.save(model.state_dict(), path)."
            ) from error
        except (RuntimeError, EOFError, OSError) as error:
            raise BackboneError(f"{path} is not a readable torch weights file ({error}).") from error
    return _clean_state_dict(raw, path)


def _clean_state_dict(raw: Any, path: Path) -> StateDict:
    while isinstance(raw, Mapping):
        nested = next((raw[key] for key in _NESTING_KEYS if isinstance(raw.get(key), Mapping)), None)
        if nested is None:
            break
        raw = nested
    if not isinstance(raw, Mapping) or not raw:
        raise BackboneError(
            f"{path} holds no state dict; save one with torch.save(model.state_dict(), path)."
        )
    state: StateDict = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            continue  # bookkeeping entries such as an epoch counter
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix) :], True
        state[name] = value
    if not state:
        raise BackboneError(f"{path} holds no tensors; save one with torch.save(model.state_dict(), path).")
    return state


#: encoder prefixes of self-supervised checkpoints: MoCo (``encoder_q.``, its momentum copy
#: ``encoder_k.`` dropped), BYOL / mmselfsup (``backbone.``, ``online_network.encoder.``), PixPro
#: (``encoder.``)
_ENCODER_PREFIXES = ("encoder_q.", "online_network.encoder.", "backbone.", "encoder.")
#: heads that self-supervised checkpoints carry instead of the classifier: SwAV / SimCLR / DINO /
#: BYOL projection heads, prototypes, predictors, and MoCo's replaced fc
_HEAD_PREFIXES = (
    "projection_head.",
    "prototypes.",
    "head.",
    "predictor.",
    "projector.",
    "fc.",
    "classifier.",
)


def self_supervised_layout(model: nn.Module, state: StateDict) -> tuple[StateDict, str]:
    """Map a self-supervised checkpoint onto ``model``'s keys: keep the encoder (MoCo's
    ``encoder_q.``, ``backbone.``, ...; SwAV / SimCLR / DINO files are the bare encoder), drop the
    projection heads, and keep the model's own classifier where the file has none (its weights are
    then the model's initialisation: features before the classifier are what detectors use).
    Returns the state to load and a note naming what was done ("" when the file fits as it is)."""
    expected = model.state_dict()
    if set(state) == set(expected):
        return state, ""
    notes = []
    for prefix in _ENCODER_PREFIXES:
        inside = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if inside and sum(k in expected for k in inside) > len(inside) // 2:
            state, notes = inside, [f"encoder {prefix.rstrip('.')}"]
            break
    heads = sorted({k.split(".")[0] for k in state if k.startswith(_HEAD_PREFIXES) and k not in expected})
    shaped = {k for k, v in state.items() if k in expected and v.shape != expected[k].shape}
    heads += sorted({k.split(".")[0] for k in shaped if k.startswith(_HEAD_PREFIXES)} - set(heads))
    if heads:
        state = {k: v for k, v in state.items() if not k.startswith(tuple(f"{h}." for h in heads))}
        notes.append(f"dropped heads {', '.join(heads)}")
    present = {k.split(".")[0] for k in state}
    # A head the file lacks entirely is kept; a head with some tensors missing stays an error.
    kept = [
        k for k in expected
        if k.startswith(_HEAD_PREFIXES) and k.split(".")[0] not in present
        and not k.endswith(".num_batches_tracked")
    ]  # fmt: skip
    if kept:
        state = {**state, **{k: expected[k] for k in kept}}
        notes.append(
            f"classifier {', '.join(sorted({k.split('.')[0] for k in kept}))} kept from initialisation"
        )
    used = sum(1 for k in state if k in expected and k not in kept)
    return state, "; ".join([*notes, f"{used} tensors from the file"]) if notes else ""


def load_strict(model: nn.Module, state: StateDict, backbone_name: str, origin: Path) -> str:
    """Load ``state`` into ``model`` after mapping self-supervised layouts
    (:func:`self_supervised_layout`); returns that mapping's note ("" when none was needed)."""
    state, note = self_supervised_layout(model, state)
    _load_exactly(model, state, backbone_name, origin)
    return note


def _load_exactly(model: nn.Module, state: StateDict, backbone_name: str, origin: Path) -> None:
    """``load_state_dict(strict=True)`` with a message that names the first mismatched keys."""
    expected = model.state_dict()
    # BatchNorm fills a missing num_batches_tracked itself (files from before torch 0.4.1 lack it).
    missing = [key for key in expected if key not in state and not key.endswith(".num_batches_tracked")]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} {tuple(value.shape)} vs {tuple(expected[key].shape)}"
        for key, value in state.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
                problems.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{more})")
        raise BackboneError(
            f"{origin} does not fit {backbone_name}: {'; '.join(problems)}; pass weights saved from the same "
            f"architecture or use --weights random."
        )
    model.load_state_dict(state, strict=True)
