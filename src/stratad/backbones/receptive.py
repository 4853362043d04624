"""Effective receptive field (ERF) of graph nodes, after Luo et al. (NeurIPS 2016).

Heckler et al. (feature-selection study, section 3.1) relate anomaly-detection performance to the
*relative* receptive field of a layer: its effective receptive field divided by the input size.

Definition used here, per node:

1. ``n_samples`` inputs of uniform noise in [0, 1], normalised with the backbone's mean / std.
2. The objective is the node's output summed over channels at its central position
   ``(h // 2, w // 2)`` (non-spatial outputs: summed over everything). Its gradient with respect to
   the normalised network input is what the theoretical field is weighted by (Luo et al.).
3. The ERF map is ``|gradient|`` averaged over samples and colour channels, shape ``(H, W)``.
4. The ERF *size* is the side, in pixels, of the smallest square window that holds ``mass_fraction``
   (default 95 %) of the map's total mass. The window is centred on the map's centre of mass
   (rounded to half a pixel), not on the image centre: the central output of an even-sized map, TF
   "SAME" padding and stride offsets shift the field by up to half a stride, and centring on the
   image would inflate the size by that shift. A mass criterion instead of a gradient threshold
   (Luo et al.) makes the size independent of the gradient's scale and robust to its noisy tails.
5. The relative RF is ``min(size, image_size) / image_size``, in (0, 1].

Eval mode throughout; random-init and pretrained weights give different ERFs, as expected.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from stratad.backbones.nodes import DEFAULT_IMAGE_SIZE, build_graph_module, resolve_nodes
from stratad.backbones.registry import Backbone
from stratad.errors import ShapeError


def effective_receptive_field(
    backbone: Backbone,
    nodes: str | Sequence[str],
    image_size: int = DEFAULT_IMAGE_SIZE,
    n_samples: int = 4,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """ERF maps ``(image_size, image_size)`` (mean ``|gradient|``) per resolved node.

    One forward pass computes all nodes; each node then costs one backward pass from that node to
    the input (the graph is retained between them), so early nodes are cheap, and nodes that return
    the very tensor of another node (identities) cost nothing.
    """
    if image_size < 1 or n_samples < 1:
        raise ShapeError(f"image_size and n_samples must be >= 1, got {image_size} and {n_samples}")
    names = resolve_nodes(backbone, nodes)
    module = build_graph_module(backbone, names)
    parameter = next(iter(backbone.model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(n_samples, 3, image_size, image_size, generator=generator)
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    inputs = ((noise - mean) / std).to(device).requires_grad_(True)
    maps: dict[str, torch.Tensor] = {}
    with torch.enable_grad():
        outputs = module(inputs)
        # Identity nodes (timm's ``aa``, ``se``, ``drop_path`` in eval mode) return their input
        # tensor itself: one backward serves all nodes sharing an output.
        first_with_source: dict[object, str] = {}
        for index, name in enumerate(names):
            output = outputs[name]
            shared = first_with_source.setdefault(_autograd_source(output), name)
            if shared != name:
                maps[name] = maps[shared]
                continue
            if output.ndim == 4:
                objective = output[:, :, output.shape[2] // 2, output.shape[3] // 2].sum()
            else:
                objective = output.sum()
            if not objective.requires_grad:  # a node that does not depend on the input
                maps[name] = torch.zeros(image_size, image_size)
                continue
            (gradient,) = torch.autograd.grad(objective, inputs, retain_graph=index < len(names) - 1)
            maps[name] = gradient.abs().mean(dim=(0, 1)).detach().cpu()
    return maps


def _autograd_source(output: torch.Tensor) -> object:
    """What produced ``output`` in the autograd graph, looking through the snapshot ``clone`` that
    protects returned nodes: equal for nodes that return the very same tensor."""
    function = output.grad_fn
    if function is None:
        return id(output)
    if type(function).__name__ == "CloneBackward0" and function.next_functions:
        return function.next_functions[0]
    return (function, output.output_nr)


def receptive_field_size(erf_map: torch.Tensor, mass_fraction: float = 0.95) -> float:
    """Side in pixels of the smallest square, centred on the centre of mass, holding ``mass_fraction``.

    Returns NaN for a map without mass (e.g. every central activation dead after a ReLU).
    """
    if not 0.0 < mass_fraction <= 1.0:
        raise ShapeError(f"mass_fraction must be in (0, 1], got {mass_fraction}")
    weights = erf_map.detach().double().abs()
    total = weights.sum()
    if weights.ndim != 2 or not total > 0:
        return float("nan")
    rows = torch.arange(weights.shape[0], dtype=torch.float64)
    cols = torch.arange(weights.shape[1], dtype=torch.float64)
    centre_row = torch.round(2 * (weights.sum(1) * rows).sum() / total) / 2
    centre_col = torch.round(2 * (weights.sum(0) * cols).sum() / total) / 2
    # Chebyshev distance from the centre to each pixel centre: a square of half-side d + 0.5 covers
    # exactly the pixels with distance <= d.
    distance = torch.maximum((rows - centre_row).abs()[:, None], (cols - centre_col).abs()[None, :]).flatten()
    order = torch.argsort(distance, stable=True)
    cumulative = torch.cumsum(weights.flatten()[order], 0)
    first = int(torch.searchsorted(cumulative, mass_fraction * total * (1 - 1e-12)))
    first = min(first, distance.numel() - 1)
    return float(2 * distance[order][first] + 1)


def relative_receptive_field(
    backbone: Backbone,
    nodes: str | Sequence[str],
    image_size: int = DEFAULT_IMAGE_SIZE,
    n_samples: int = 4,
    seed: int = 0,
    mass_fraction: float = 0.95,
    cache_dir: Path | None = None,
) -> dict[str, float]:
    """Effective receptive field size / input size per resolved node, in (0, 1] (module docstring).

    With ``cache_dir``, results are kept in a JSON file per backbone, weights (a digest of every
    parameter and buffer), input size and settings: the field is a property of the network, not of
    the data, so sweeps over many categories compute it once (DenseNet-201's 711 nodes take minutes).
    """
    names = resolve_nodes(backbone, nodes)
    path = None
    if cache_dir is not None:
        path = cache_dir / _cache_name(backbone, image_size, n_samples, seed, mass_fraction)
        known = _read_cache(path)
        if all(name in known for name in names):
            return {name: known[name] for name in names}
    maps = effective_receptive_field(backbone, names, image_size, n_samples, seed)
    values = {
        name: min(receptive_field_size(erf_map, mass_fraction), float(image_size)) / image_size
        for name, erf_map in maps.items()
    }
    if path is not None:
        _write_cache(path, {**_read_cache(path), **values})
    return values


def default_cache_dir() -> Path:
    """``$STRATAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/stratad``, else ``~/.cache/stratad``."""
    if os.environ.get("STRATAD_CACHE_DIR"):
        return Path(os.environ["STRATAD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stratad"


_CACHE_VERSION = 1


def _cache_name(backbone: Backbone, image_size: int, n_samples: int, seed: int, mass_fraction: float) -> str:
    digest = hashlib.sha256()
    settings = {
        "version": _CACHE_VERSION,
        "image_size": image_size,
        "n_samples": n_samples,
        "seed": seed,
        "mass_fraction": mass_fraction,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for key, tensor in backbone.model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return f"{backbone.name}-{image_size}px-{digest.hexdigest()[:20]}.json"


def _read_cache(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # absent or damaged: recompute
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write_cache(path: Path, values: dict[str, float]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(values, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the recomputation next time
