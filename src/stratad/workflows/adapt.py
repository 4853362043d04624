"""``stratad adapt``: PANDA feature adaptation of a backbone on a dataset's good training images,
written as a weights file every detector loads with ``--weights``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stratad._progress import Reporter
from stratad.data.datasets import DataSource
from stratad.errors import StratadError


@dataclass
class AdaptRun:
    out: Path
    result: Any
    n_train: int
    outliers: str


def ses_path(out: Path) -> Path:
    """Where SES's checkpoints go beside the adapted weights."""
    return out.with_name(out.stem + ".ses.safetensors")


def adapt_to_file(
    source: DataSource,
    out: str | Path,
    backbone: str = "efficientnet_lite0",
    weights: str = "imagenet",
    image_size: int = 256,
    method: str = "compact",
    params: dict[str, str] | None = None,
    outliers: Path | None = None,
    outlier_defects: str = "cutpaste",
    fisher_images: Path | None = None,
    device: str = "cpu",
    reporter: Reporter | None = None,
) -> AdaptRun:
    """Adapt ``backbone`` on the training split of ``source`` (module docstring of
    :mod:`stratad.adapt.panda`) and write ``out`` (atomically; SES checkpoints beside it). Every
    argument is checked before any image is read; a killed run resumes from ``<out>.resume.pt``."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from stratad._options import check_bounds, coerce_options
    from stratad.adapt.panda import AdaptConfig, Variant, adapt, generic_images
    from stratad.backbones import build_backbone
    from stratad.device import resolve_device
    from stratad.export.io import atomic_write, check_output_file
    from stratad.selection.sweep import load_uint8_images

    reporter = reporter or Reporter()
    out = Path(out)
    if out.suffix.lower() != ".safetensors":
        raise StratadError(f"--out must be a .safetensors file (it loads with --weights), got {out}")
    check_output_file(out, "adapted.safetensors")
    if method not in ("compact", "oe"):
        raise StratadError(f"--method must be compact or oe, got {method!r}")
    for folder, option in ((outliers, "--outliers"), (fisher_images, "--fisher-images")):
        if folder is not None and not folder.is_dir():
            raise StratadError(f"{option} {folder} is not a folder")
    options = dict(params or {})
    if "outlier_exposure" in options:
        raise StratadError("choose outlier exposure with --method oe, not -p outlier_exposure")
    config = AdaptConfig(**coerce_options(AdaptConfig, options, StratadError, "adapt"))
    config.outlier_exposure = method == "oe"
    check_bounds(config, StratadError, "adapt")
    device = resolve_device(device)
    model = build_backbone(backbone, weights=weights, seed=config.seed)
    split = source.load()
    reporter.note(f"{split.describe()}; adapting {backbone} ({method}, variant {config.variant.value})")
    train = load_uint8_images(split.train, image_size)
    outlier_images, described = None, "none"
    if method == "oe":
        if outliers is not None:
            outlier_images, described = generic_images(image_size, outliers), f"the images of {outliers}"
        else:
            from stratad.synth import make_defects

            rng = np.random.default_rng(config.seed)
            sources = [t.permute(1, 2, 0).numpy() for t in train]
            made = make_defects(sources, list(range(len(sources))), outlier_defects, rng)
            outlier_images = torch.stack([torch.from_numpy(np.array(d.image)).permute(2, 0, 1) for d in made])
            described = f"synthetic {outlier_defects} defects on the training images"
        reporter.note(f"outliers: {described} ({len(outlier_images)})")
    generic = None
    if config.variant is Variant.ewc and method == "compact":
        generic = generic_images(image_size, fisher_images)
        where = fisher_images or "scikit-image's photographs"
        reporter.note(f"Fisher information: the training images and {len(generic)} images of {where}")
    resume = out.with_name(out.name + ".resume.pt")
    with reporter.count("adapting") as update:

        def tell(epoch: int, epochs: int, loss: float, spread: float, seconds: float) -> None:
            update(f"epoch {epoch}/{epochs}, loss {loss:.5f}, feature spread {spread:.3f}", epoch, epochs)

        result = adapt(model, train, config, outlier_images, generic, device, tell, resume)
    metadata = {
        "stratad": json.dumps(
            {
                "kind": "adapted backbone",
                "backbone": backbone,
                "start_weights": weights,
                "image_size": image_size,
                "method": method,
                "config": {k: getattr(v, "value", v) for k, v in asdict(config).items()},
                "outliers": described,
                "losses": result.losses,
                "spread": result.spread,
                "seconds": round(result.seconds, 2),
            }
        )
    }
    if result.checkpoints:
        tensors = {f"epoch{e}.{k}": v for e, state in result.checkpoints for k, v in state.items()}
        atomic_write(ses_path(out), lambda tmp: save_file(tensors, tmp, metadata=metadata))
    atomic_write(out, lambda tmp: save_file(result.state, tmp, metadata=metadata))
    resume.unlink(missing_ok=True)
    return AdaptRun(out, result, len(train), described)
