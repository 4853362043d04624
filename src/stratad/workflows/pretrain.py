"""``stratad pretrain``: dense self-supervised pretraining (PixPro, DS2) of a backbone on a folder of
images, written as a weights file every detector loads with ``--weights``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stratad._progress import Reporter
from stratad.errors import StratadError


@dataclass
class PretrainRun:
    out: Path
    result: Any
    images: int
    source: str


def pretraining_images(data: Path) -> tuple[list[Path], str]:
    """The images to pretrain on: a dataset's training split when ``data`` is one (MVTec AD, MTD, a
    good/defect folder layout: test images never enter), else every image in the folder tree."""
    from stratad.data import load_dataset
    from stratad.data.io import is_image_file

    if not data.is_dir():
        raise StratadError(f"--data {data} is not a folder")
    try:
        split = load_dataset(data)
        return [Path(r.path) for r in split.train], f"the training split of {split.describe()}"
    except StratadError:
        paths = sorted(p for p in data.rglob("*") if p.is_file() and is_image_file(p))
        if not paths:
            raise StratadError(f"{data} holds no image") from None
        return paths, f"every image under {data}"


def pretrain_to_file(
    data: Path,
    out: str | Path,
    backbone: str = "efficientnet_lite0",
    weights: str = "imagenet",
    params: dict[str, str] | None = None,
    load_size: int = 256,
    device: str = "cpu",
    reporter: Reporter | None = None,
) -> PretrainRun:
    """Pretrain ``backbone`` on the images of ``data`` (:func:`pretraining_images`), each read at
    ``load_size``, and write ``out`` atomically; a killed run resumes from ``<out>.resume.pt``."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from stratad._options import check_bounds, coerce_options
    from stratad.backbones import build_backbone
    from stratad.data.io import read_image_resized
    from stratad.device import resolve_device
    from stratad.export.io import atomic_write, check_output_file
    from stratad.pretrain import PretrainConfig, pretrain

    reporter = reporter or Reporter()
    out = Path(out)
    if out.suffix.lower() != ".safetensors":
        raise StratadError(f"--out must be a .safetensors file (it loads with --weights), got {out}")
    check_output_file(out, "pretrained.safetensors")
    config = PretrainConfig(**coerce_options(PretrainConfig, params or {}, StratadError, "pretrain"))
    check_bounds(config, StratadError, "pretrain")
    if config.image_size > load_size:
        raise StratadError(f"--image-size {config.image_size} exceeds the load size {load_size}")
    device = resolve_device(device)
    model = build_backbone(backbone, weights=weights, seed=config.seed)
    paths, described = pretraining_images(Path(data))
    reporter.note(f"pretraining {backbone} ({config.method.value}) on {len(paths)} images: {described}")
    with reporter.bar("reading images", len(paths)) as advance:
        arrays = []
        for path in paths:
            arrays.append(torch.from_numpy(np.array(read_image_resized(path, load_size))).permute(2, 0, 1))
            advance(1)
    images = torch.stack(arrays)
    resume = out.with_name(out.name + ".resume.pt")
    with reporter.count("pretraining") as update:

        def tell(epoch: int, epochs: int, loss: float, pairs: float, rate: float) -> None:
            label = f"epoch {epoch}/{epochs}, loss {loss:.4f}, {pairs:.1f} positive pairs/image"
            label += f", {rate:.1f} images/s"
            update(label, epoch, epochs)

        result = pretrain(model, images, config, device, tell, resume)
    metadata = {
        "stratad": json.dumps(
            {
                "kind": "pretrained backbone",
                "backbone": backbone,
                "start_weights": weights,
                "config": {k: getattr(v, "value", v) for k, v in asdict(config).items()},
                "images": described,
                "losses": result.losses,
                "positive_pairs_per_image": result.positives,
                "epoch_seconds": result.epoch_seconds,
            }
        )
    }
    atomic_write(out, lambda tmp: save_file(result.state, tmp, metadata=metadata))
    resume.unlink(missing_ok=True)
    return PretrainRun(out, result, len(paths), described)
