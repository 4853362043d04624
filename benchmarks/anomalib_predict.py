"""anomalib's side of benchmarks/bench_predict.py; runs with an interpreter that has anomalib (not stratad).

    fit:     PYTHON benchmarks/anomalib_predict.py fit --weights W.pt --train DIR --work DIR
    predict: PYTHON benchmarks/anomalib_predict.py predict --work DIR --images DIR

The model matches stratad's: PatchCore on timm's ``tf_efficientnet_lite0`` (the same ImageNet
weights, handed over as a state dict because nothing can be downloaded here), layers blocks.2 and
blocks.4, 256 x 256 input, a coreset of about 1000 patches, 2 threads. ``predict`` runs
``Engine.predict`` on a folder as a user would, with anomalib's default visualiser writing its
images, and prints one JSON line with its own timings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

T0 = time.perf_counter()

import torch

torch.set_num_threads(2)


def build(ratio: float):  # type: ignore[no-untyped-def]
    from anomalib.models import Patchcore

    return Patchcore(
        backbone="tf_efficientnet_lite0",
        layers=["blocks.2", "blocks.4"],
        pre_trained=False,
        coreset_sampling_ratio=ratio,
        num_neighbors=9,
    )


def fit(args: argparse.Namespace) -> None:
    from anomalib.data import Folder
    from anomalib.engine import Engine

    n_images = len(list(Path(args.train).glob("*.png")))
    # ~1024 patches per 256 px image at stride 8: this ratio keeps about 1000 of them, as stratad does.
    ratio = 1000 / (n_images * 32 * 32)
    model = build(ratio)
    extractor = model.model.feature_extractor.feature_extractor
    state = torch.load(args.weights, map_location="cpu")
    own = extractor.state_dict()
    used = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    extractor.load_state_dict(used, strict=False)
    missing = sorted(set(own) - set(used))
    data = Folder(
        name="mtd",
        root=args.train,
        normal_dir=".",
        train_batch_size=16,
        eval_batch_size=16,
        num_workers=0,
        normal_split_ratio=0.1,
    )
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=args.work, max_epochs=1)
    t0 = time.perf_counter()
    engine.fit(model=model, datamodule=data)
    fit_s = time.perf_counter() - t0
    checkpoint = Path(args.work) / "patchcore.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    print(
        json.dumps(
            {
                "fit_seconds": round(fit_s, 2),
                "train_images": n_images,
                "coreset_ratio": ratio,
                "weights_loaded": len(used),
                "weights_missing": missing,
                "checkpoint": str(checkpoint),
            }
        )
    )


def predict(args: argparse.Namespace) -> None:
    from anomalib.engine import Engine

    model = build(0.01)
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=args.work)
    n_images = len(list(Path(args.images).glob("*.png")))
    t0 = time.perf_counter()
    engine.predict(
        model=model,
        data_path=args.images,
        ckpt_path=Path(args.work) / "patchcore.ckpt",
        return_predictions=False,
    )
    predict_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "images": n_images,
                "predict_seconds": round(predict_s, 2),
                "since_process_start_seconds": round(time.perf_counter() - T0, 2),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", choices=["fit", "predict"])
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--train", type=Path)
    parser.add_argument("--images", type=Path)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    fit(args) if args.step == "fit" else predict(args)


if __name__ == "__main__":
    main()
