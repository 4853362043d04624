"""End-to-end `stratad predict` on real-resolution images: images/s for each --maps mode, peak RSS.

The folder: 83 MTD test images upscaled to 900 x 900 PNG (MVTec AD bottle's size; MTD's own images
are 200-400 px), made once under --work. The model: EfficientNet-Lite0 at 256 px, PatchCore on
blocks.2 + blocks.4, coreset 1000, fitted on the 571 MTD training images. Each mode runs as the user
runs it (`python -m stratad predict ...` in a fresh process, overlays on) --repeat times; the JSON
keeps the median, with and without the process start (the time to the first "scoring" progress line
is not separable from outside, so "excluding start" subtracts the measured time of `stratad --help`).
Beside them, in one process whose imports are done (`in_process_rates`): the backbone alone and
the whole scoring on decoded images held in memory, with predict's thread policy (the rate
end-to-end prediction is compared with), and `predict_to_folder` per mode, model load included.

    .venv/bin/python benchmarks/bench_predict.py --out benchmarks/results/predict_mtd900.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MTD = ROOT.parent / "shared" / "datasets" / "mtd"


def make_folder(work: Path, count: int, side: int) -> Path:
    from PIL import Image

    from stratad.data import load_dataset

    folder = work / f"images_{side}"
    if folder.is_dir() and len(list(folder.glob("*.png"))) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    test = load_dataset(MTD, "mtd").test
    for i, record in enumerate(test[:: max(1, len(test) // count)][:count]):
        with Image.open(record.path) as img:
            img.convert("RGB").resize((side, side), Image.Resampling.BILINEAR).save(folder / f"{i:03d}.png")
    return folder


TIME = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)


def run(args: list[str]) -> tuple[float, float | None]:
    """Wall seconds and peak RSS (MB; None without GNU time) of one `python -m stratad` process."""
    prefix = [TIME, "-f", "%M"] if TIME else []
    t0 = time.perf_counter()
    proc = subprocess.run([*prefix, sys.executable, "-m", "stratad", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    rss = float(proc.stderr.strip().splitlines()[-1]) / 1024 if TIME else None
    return wall, rss


BACKBONE_ONLY = """
import json, sys, time
from stratad.runtime import configure_runtime
configure_runtime()
import torch
from stratad.data import images_in, read_image_rgb
from stratad.data.io import image_to_tensor
from stratad.pipeline import Pipeline
pipe = Pipeline.load(sys.argv[1])
tensors = [image_to_tensor(read_image_rgb(p), pipe.config.image_size)[None] for p in images_in(sys.argv[2])]
def forward(x):
    with torch.no_grad():
        return pipe.extractor(x)
list(pipe.imap_images(forward, tensors[:4]))
t0 = time.perf_counter()
list(pipe.imap_images(forward, tensors))
backbone_s = time.perf_counter() - t0
t0 = time.perf_counter()
list(pipe.imap_images(pipe._score_one, tensors))
scoring_s = time.perf_counter() - t0
import shutil
from stratad.workflows import predict_to_folder
rates = {"backbone": len(tensors) / backbone_s, "scoring": len(tensors) / scoring_s}
for maps in ("none", "png16", "npy"):
    shutil.rmtree(sys.argv[3], ignore_errors=True)
    t0 = time.perf_counter()
    predict_to_folder(sys.argv[1], sys.argv[2], sys.argv[3], maps=maps)
    rates[f"predict_to_folder_{maps}"] = len(tensors) / (time.perf_counter() - t0)
shutil.rmtree(sys.argv[3], ignore_errors=True)
print(json.dumps(rates))
"""


def in_process_rates(model: Path, folder: Path, work: Path) -> dict[str, float]:
    """Images/s in one process whose imports are done: the backbone alone and the whole scoring
    (backbone, detector, map head) on decoded, resized images held in memory, with predict's thread
    policy (the bar to compare with); and ``predict_to_folder`` per --maps mode, the model load, the
    decoding and every output included (what the command does once Python and torch are loaded)."""
    proc = subprocess.run(
        [sys.executable, "-c", BACKBONE_ONLY, str(model), str(folder), str(work / "in_process")],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return {k: round(v, 1) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def run_anomalib(args: argparse.Namespace, folder: Path) -> dict[str, object]:
    """anomalib 2.x PatchCore (same backbone weights, layers, input size and coreset size) fitted once
    on --anomalib-train MTD training images, then `Engine.predict` on the folder in a fresh process,
    --repeat times (benchmarks/anomalib_predict.py). Its fit is slow (~1 min for 100 images here),
    and the predict rate does not depend on the training set size."""
    import torch

    from stratad.backbones import build_backbone
    from stratad.data import load_dataset

    work = args.work / "anomalib"
    train = work / "train"
    train.mkdir(parents=True, exist_ok=True)
    weights = work / "lite0_timm.pt"
    if not weights.is_file():
        torch.save(build_backbone("efficientnet_lite0").model.state_dict(), weights)
    from PIL import Image

    for i, record in enumerate(load_dataset(MTD, "mtd").train[: args.anomalib_train]):
        target = train / f"{i:03d}.png"
        if not target.is_file():
            Image.open(record.path).convert("RGB").save(target)
    script = str(ROOT / "benchmarks" / "anomalib_predict.py")
    python = str(args.anomalib_python)
    if not (work / "run" / "patchcore.ckpt").is_file():
        fitted = subprocess.run(
            [
                python,
                script,
                "fit",
                "--weights",
                str(weights),
                "--train",
                str(train),
                "--work",
                str(work / "run"),
            ],
            capture_output=True,
            text=True,
        )
        if fitted.returncode != 0:
            raise SystemExit(fitted.stderr[-2000:])
    walls, inside = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [python, script, "predict", "--work", str(work / "run"), "--images", str(folder)],
            capture_output=True,
            text=True,
        )
        walls.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-2000:])
        inside.append(json.loads(proc.stdout.strip().splitlines()[-1])["predict_seconds"])
    wall, predict_s = statistics.median(walls), statistics.median(inside)
    row = {
        "tool": "anomalib PatchCore, Engine.predict with its default visualiser",
        "images": args.count,
        "wall_seconds_median": round(wall, 2),
        "images_per_second_with_start": round(args.count / wall, 2),
        "images_per_second_predict_call": round(args.count / predict_s, 2),
    }
    print(json.dumps(row), flush=True)
    return row


def other_commands(args: argparse.Namespace, model: Path, folder: Path) -> list[dict[str, object]]:
    """The other ways of scoring, each in a fresh process, median of --repeat: `stratad evaluate` on
    MTD's test split (773 images of 200-400 px, masks read, every metric computed) and `stratad
    predict` with the model exported to ONNX (onnxruntime), maps none, on the 900 px folder."""
    onnx = args.work / "patchcore.onnx"
    if not onnx.is_file():
        run(["export", "--model", str(model), "--out", str(onnx)])
    from stratad.data import load_dataset

    n_test = len(load_dataset(MTD, "mtd").test)
    jobs = {
        "evaluate_mtd_test": (
            n_test,
            ["evaluate", "--model", str(model), "--data", str(MTD), "--no-progress"],
        ),
        "predict_onnx_none": (
            args.count,
            [
                "predict",
                "--model",
                str(onnx),
                str(folder),
                "--out",
                "{out}",
                "--maps",
                "none",
                "--no-progress",
            ],
        ),
    }
    rows = []
    for name, (count, command) in jobs.items():
        walls = []
        for rep in range(args.repeat):
            out = args.work / f"out_{name}_{rep}"
            shutil.rmtree(out, ignore_errors=True)
            walls.append(run([part.replace("{out}", str(out)) for part in command])[0])
        wall = statistics.median(walls)
        row = {
            "command": name,
            "images": count,
            "wall_seconds_median": round(wall, 2),
            "images_per_second_with_start": round(count / wall, 2),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict_mtd900.json")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_predict")
    parser.add_argument("--count", type=int, default=83)
    parser.add_argument("--side", type=int, default=900)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--anomalib-python",
        type=Path,
        help="interpreter with anomalib 2.x installed: also run anomalib's PatchCore predict on the folder",
    )
    parser.add_argument("--anomalib-train", type=int, default=100, help="training images for anomalib's fit")
    args = parser.parse_args()
    if not (MTD / "MT_Free").is_dir():
        sys.exit(f"needs the MTD dataset at {MTD}")
    args.work.mkdir(parents=True, exist_ok=True)
    folder = make_folder(args.work, args.count, args.side)
    model = args.work / "patchcore.stratad"
    if not model.is_file():
        run(["fit", "--data", str(MTD), "--out", str(model), "-p", "coreset_size=1000", "--no-progress"])
    start_s = statistics.median(run(["--help"])[0] for _ in range(args.repeat))
    in_memory = [in_process_rates(model, folder, args.work) for _ in range(args.repeat)]
    in_process = {key: statistics.median(r[key] for r in in_memory) for key in in_memory[0]}
    backbone_rate = in_process["backbone"]
    rows = []
    for maps in ("none", "png16", "npy"):
        walls: list[float] = []
        rss: list[float | None] = []
        for rep in range(args.repeat):
            out = args.work / f"out_{maps}_{rep}"
            shutil.rmtree(out, ignore_errors=True)
            wall, peak = run(
                [
                    "predict",
                    "--model",
                    str(model),
                    str(folder),
                    "--out",
                    str(out),
                    "--maps",
                    maps,
                    "--no-progress",
                ]
            )
            walls.append(wall)
            rss.append(peak)
        files = [p for p in out.rglob("*") if p.is_file() and p.name != "scores.csv"]
        map_bytes = sum(p.stat().st_size for p in files if ".overlay." not in p.name)
        overlay_bytes = sum(p.stat().st_size for p in files if ".overlay." in p.name)
        wall = statistics.median(walls)
        row = {
            "maps": maps,
            "images": args.count,
            "wall_seconds_median": round(wall, 2),
            "images_per_second_with_start": round(args.count / wall, 2),
            "images_per_second_without_start": round(args.count / max(wall - start_s, 1e-9), 2),
            "images_per_second_in_process": in_process[f"predict_to_folder_{maps}"],
            "backbone_only_over_end_to_end": round(backbone_rate / (args.count / wall), 2),
            "peak_rss_mb": None if None in rss else round(max(r for r in rss if r is not None), 1),
            "map_bytes_per_image": round(map_bytes / args.count),
            "overlay_bytes_per_image": round(overlay_bytes / args.count),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    others = other_commands(args, model, folder)
    anomalib_row = run_anomalib(args, folder) if args.anomalib_python else None
    anomalib_note = (
        "compared: benchmarks/anomalib_predict.py with --anomalib-python"
        if anomalib_row
        else "not run: pass --anomalib-python PATH (an interpreter with anomalib installed)"
    )
    result = {
        "benchmark": "predict_end_to_end",
        "cpu_count": os.cpu_count(),
        "process_start_seconds": round(start_s, 2),
        "folder": f"{args.count} MTD test images upscaled to {args.side} x {args.side} PNG",
        "model": "efficientnet_lite0 256 px, patchcore blocks.2+blocks.4, coreset 1000, 571 MTD train images",
        "anomalib": anomalib_note,
        "anomalib_results": anomalib_row,
        "overlays": "jpg (the default)",
        "in_process_images_per_second": in_process,
        "results": rows,
        "other_commands": others,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
