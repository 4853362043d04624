"""Load test of `stratad serve` on the loopback: latency percentiles and images/s under concurrent clients.

The service runs as users run it, in its own process (`stratad.serve.serve`, one uvicorn worker,
the runtime settings of the `stratad` command), on a free port of 127.0.0.1. --clients threads
(urllib, one connection per request) send --requests POST /predict between them, each carrying
--files-per-request real images (from --images, cycled) and asking for the overlay unless
--no-overlay; --warmup requests go first and are not counted. Latency is measured by the client,
from the request's first byte to the answer's last. The JSON holds the latency p50/p90/p99/max,
images/s, the errors, the server process's CPU seconds and peak RSS, the machine load
(os.getloadavg before and after) and the settings.

Without --model, a model is fitted once under --work: on the MTD training images (../shared) with
the default pipeline (EfficientNet-Lite0, 256 px, PatchCore) and thresholds at 1 % FPR, or, without
MTD, on a small synthetic set at 64 px. Without --images, MTD's test images (else the synthetic ones).

    .venv/bin/python benchmarks/bench_serve.py --requests 200 --clients 4 \\
        --out benchmarks/results/serve_load.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MTD = ROOT.parent / "shared" / "datasets" / "mtd"

SERVER = r"""
import sys
from stratad.runtime import configure_runtime
configure_runtime()
from stratad.serve import serve
serve(sys.argv[1], host="127.0.0.1", port=0, on_ready=lambda url: print(url, flush=True),
      max_files=int(sys.argv[2]))
"""


def default_model(work: Path) -> tuple[Path, str]:
    """A calibrated model fitted once under ``work`` (module docstring) and what it is, in words."""
    if (MTD / "MT_Free").is_dir():
        model, about = work / "mtd_default.stratad", "default pipeline fitted on MTD train, fpr=0.01"
        source, settings, calibrate = MTD, {}, "fpr=0.01"
    else:
        sys.path.insert(0, str(ROOT))
        from tests.conftest import make_mvtec

        model, about = work / "synthetic_64.stratad", "64 px pipeline fitted on a synthetic set, fpr=0.2"
        source = work / "synthetic"
        if not source.is_dir():
            make_mvtec(source, n_train=16, n_good=8, n_bad=8, size=64)
        settings, calibrate = {"image_size": 64}, "fpr=0.2"
    if not model.is_file():
        from stratad.data.datasets import DataSource
        from stratad.workflows import fit_to_file

        print(f"fitting {model} ({about})", flush=True)
        fit_to_file(DataSource(root=source), settings, model, calibrate=calibrate)
    return model, about


def image_paths(folder: Path | None, work: Path) -> tuple[list[Path], str]:
    """--images (every image under it), else MTD's test images, else the synthetic test images."""
    from stratad.data import images_in, load_dataset

    if folder is not None:
        return images_in(folder, recursive=True), str(folder)
    if (MTD / "MT_Free").is_dir():
        return [r.path for r in load_dataset(MTD, "mtd").test], "MTD test images"
    return images_in(work / "synthetic" / "widget" / "test", recursive=True), "synthetic test images"


def multipart(images: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
            for name, data in images
        )
        + f"--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def start_server(model: Path, max_files: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(model), str(max_files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("http://"):
        proc.kill()
        raise SystemExit(f"the service did not start: {line} {proc.stderr.read()[-2000:]}")
    return proc, line


def process_usage(pid: int) -> dict[str, float | None]:
    """CPU seconds (user + system) and peak RSS (MB) of a running process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        status = Path(f"/proc/{pid}/status").read_text()
        peak = next(int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM"))
        return {"cpu_seconds": cpu, "peak_rss_mb": peak}
    except (OSError, StopIteration, IndexError, ValueError):
        return {"cpu_seconds": None, "peak_rss_mb": None}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (NumPy's default) of a non-empty list."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def load_test(
    url: str, payloads: list[tuple[bytes, str]], requests: int, clients: int, overlay: bool
) -> tuple[list[float], list[str], float]:
    """Latencies (s) of the successful requests, the errors (one line each), the wall seconds."""
    target = f"{url}/predict?overlay={'true' if overlay else 'false'}"
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def client() -> None:
        while True:
            with lock:
                index = next(counter)
            if index >= requests:
                return
            body, kind = payloads[index % len(payloads)]
            request = urllib.request.Request(target, data=body, headers={"Content-Type": kind}, method="POST")
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=300) as response:
                    json.loads(response.read())
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
            except urllib.error.HTTPError as err:
                with lock:
                    errors.append(f"HTTP {err.code}: {err.read()[:200]!r}")
            except (OSError, ValueError) as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="a .stratad or .onnx file (default: fitted under --work)")
    parser.add_argument("--images", type=Path, help="folder of images to send (default: MTD's test images)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_serve")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--files-per-request", type=int, default=1)
    parser.add_argument("--distinct", type=int, default=64, help="distinct images read from --images")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--no-overlay", action="store_true", help="ask for no overlays (overlay=false)")
    args = parser.parse_args()
    if args.requests < 1 or args.clients < 1 or args.files_per_request < 1 or args.distinct < 1:
        raise SystemExit("--requests, --clients, --files-per-request and --distinct must be positive")
    args.work.mkdir(parents=True, exist_ok=True)

    from stratad.runtime import configure_runtime

    configure_runtime()
    from PIL import Image

    if args.model is not None:
        model, about = args.model, str(args.model)
    else:
        model, about = default_model(args.work)
    every, folder = image_paths(args.images, args.work)
    paths = every[:: max(1, len(every) // args.distinct)][: args.distinct]  # spread over the set
    if not paths:
        raise SystemExit(f"no images in {folder}")
    files = [(p.name, p.read_bytes()) for p in paths]
    sizes = []
    for path in paths:
        with Image.open(path) as img:
            sizes.append(img.width * img.height)
    k = args.files_per_request
    payloads = [multipart([files[(i * k + j) % len(files)] for j in range(k)]) for i in range(len(files))]

    load_before = os.getloadavg()
    proc, url = start_server(model, max(16, k))
    try:
        warm_lat, warm_err, _ = load_test(url, payloads, args.warmup, 1, not args.no_overlay)
        if warm_err:
            raise SystemExit(f"warm-up failed: {warm_err[0]}")
        usage_before = process_usage(proc.pid)
        latencies, errors, wall = load_test(url, payloads, args.requests, args.clients, not args.no_overlay)
        usage_after = process_usage(proc.pid)
        load_after = os.getloadavg()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    ok = len(latencies)
    cpu = (
        None
        if usage_before["cpu_seconds"] is None or usage_after["cpu_seconds"] is None
        else usage_after["cpu_seconds"] - usage_before["cpu_seconds"]
    )
    ms = [x * 1000 for x in latencies] or [float("nan")]
    result: dict[str, Any] = {
        "benchmark": "serve_load",
        "settings": {
            "requests": args.requests,
            "clients": args.clients,
            "files_per_request": k,
            "overlay": not args.no_overlay,
            "warmup_requests": args.warmup,
            "model": about,
            "images": f"{len(paths)} distinct images from {folder}, cycled",
            "image_megapixels_median": round(statistics.median(sizes) / 1e6, 3),
            "transport": "HTTP/1.1 on 127.0.0.1, urllib, one connection per request",
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
        "requests_ok": ok,
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "wall_seconds": round(wall, 3),
        "images_per_second": round(ok * k / wall, 2),
        "requests_per_second": round(ok / wall, 2),
        "latency_ms": {
            "p50": round(percentile(ms, 50), 1),
            "p90": round(percentile(ms, 90), 1),
            "p99": round(percentile(ms, 99), 1),
            "max": round(max(ms), 1),
            "mean": round(statistics.fmean(ms), 1),
        },
        "warmup_latency_ms": [round(x * 1000, 1) for x in warm_lat],
        "server": {
            "cpu_seconds": None if cpu is None else round(cpu, 2),
            "cpu_ms_per_image": None if cpu is None or not ok else round(cpu * 1000 / (ok * k), 1),
            "peak_rss_mb": usage_after["peak_rss_mb"],
        },
    }
    print(json.dumps(result, indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
