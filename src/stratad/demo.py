"""The embedded, offline demo: real ImageNet weights on real photos that ship with scikit-image.

For each texture (brick, grass, gravel) a small MVTec-AD-style dataset is written: training crops
from the upper part of the photo, test crops from the lower part, half of them with a patch of a
different texture pasted in (exact masks). EfficientNet-Lite0 + PatchCore is fitted and evaluated
through the same code paths as ``stratad fit`` / ``stratad evaluate``, and each texture's HTML report
(``report/<texture>/index.html``) is written as ``stratad report`` writes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

TEXTURES = ("brick", "grass", "gravel")
CROP = 160


def _texture(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    return np.stack([img] * 3, axis=-1) if img.ndim == 2 else img[..., :3]


def _crop(img: np.ndarray, rng: np.random.Generator, y_range: tuple[int, int]) -> np.ndarray:
    y = int(rng.integers(y_range[0], y_range[1] - CROP + 1))
    x = int(rng.integers(0, img.shape[1] - CROP + 1))
    return img[y : y + CROP, x : x + CROP].copy()


def write_demo_dataset(root: Path, texture: str, n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    """Write <root>/<texture>/{train/good, test/good, test/pasted, ground_truth/pasted}."""
    rng = np.random.default_rng(seed)
    img = _texture(texture)
    others = [_texture(t) for t in TEXTURES if t != texture]
    split_row = int(img.shape[0] * 0.6)
    base = root / texture
    for sub in ("train/good", "test/good", "test/pasted", "ground_truth/pasted"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(_crop(img, rng, (0, split_row))).save(base / "train/good" / f"{i:03d}.png")
    for i in range(n_test):
        Image.fromarray(_crop(img, rng, (split_row, img.shape[0]))).save(base / "test/good" / f"{i:03d}.png")
        target = _crop(img, rng, (split_row, img.shape[0]))
        donor = others[i % len(others)]
        h, w = (int(v) for v in rng.integers(16, 44, size=2))
        sy, sx = int(rng.integers(0, donor.shape[0] - h)), int(rng.integers(0, donor.shape[1] - w))
        ty, tx = int(rng.integers(0, CROP - h)), int(rng.integers(0, CROP - w))
        target[ty : ty + h, tx : tx + w] = donor[sy : sy + h, sx : sx + w]
        mask = np.zeros((CROP, CROP), dtype=np.uint8)
        mask[ty : ty + h, tx : tx + w] = 255
        Image.fromarray(target).save(base / "test/pasted" / f"{i:03d}.png")
        Image.fromarray(mask).save(base / "ground_truth/pasted" / f"{i:03d}_mask.png")
    return base


def run_demo(
    out: Path, progress: bool = True, image_size: int = 256, seed: int = 0
) -> dict[str, dict[str, Any]]:
    from stratad._progress import progress_bar
    from stratad.data import load_dataset, read_image_rgb
    from stratad.evaluation import evaluate_pipeline
    from stratad.export.io import atomic_write
    from stratad.pipeline import Pipeline
    from stratad.report.html import render_model_report
    from stratad.report.overlay import heatmap_overlay, write_png

    out = Path(out)
    results: dict[str, dict[str, Any]] = {}
    for texture in TEXTURES:
        root = write_demo_dataset(out / "data", texture, seed=seed)
        split = load_dataset(root, "mvtec")
        pipe = Pipeline(backbone="efficientnet_lite0", detector="patchcore", image_size=image_size, seed=seed)
        with progress_bar(f"{texture}: fit", len(split.train), progress) as advance:
            pipe.fit(split.train, advance)
        pipe.save(out / f"{texture}.stratad")
        with progress_bar(f"{texture}: test", len(split.test), progress) as advance:
            metrics, pred = evaluate_pipeline(pipe, split.test, advance)
        results[texture] = metrics
        render_model_report(
            pipe, split.test, pred, metrics, out / "report" / texture, title=f"demo: {texture}"
        )
        overlay_dir = out / "overlays" / texture
        overlay_dir.mkdir(parents=True, exist_ok=True)
        assert pred.maps is not None
        vmin, vmax = float(pred.maps.min()), float(pred.maps.max())
        for i, record in enumerate(split.test):
            if record.label == 1 and i % 4 == 0:
                full = pred.map_at_original_size(i)
                overlay = heatmap_overlay(read_image_rgb(record.path), full, vmin, vmax)
                write_png(str(overlay_dir / f"{record.path.stem}_overlay.png"), overlay)
    text = json.dumps(results, indent=2)
    atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(text))
    return results
