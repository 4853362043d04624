"""The HTTP service, run for real: uvicorn in a thread on a free loopback port, called with urllib,
and its page driven by Chromium. One calibrated tiny model is fitted for the module."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from stratad.data.datasets import DataSource
from stratad.data.io import decode_image_bytes, read_image_rgb
from stratad.errors import ImageReadError, StratadError
from stratad.pipeline import Pipeline, resize_map
from stratad.serve import BackgroundServer, create_app
from tests.browser import chromium_page
from tests.conftest import make_mvtec

SCREENSHOT = Path(__file__).resolve().parents[2] / "runs" / "serve_screenshot.png"


@dataclass
class Service:
    url: str
    app: Any
    model: Path
    data: Path
    #: how many times the model file was loaded while the service ran
    loads: list[Path]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from stratad.workflows import fit_to_file

    root = tmp_path_factory.mktemp("serve")
    category = make_mvtec(root / "mvtec", n_train=12, n_good=2, n_bad=2, size=64)
    model = root / "model.stratad"
    fit_to_file(DataSource(root=root / "mvtec"), {"image_size": 64}, model, calibrate="fpr=0.2", holdout=0.5)
    return model, category


@pytest.fixture(scope="module")
def service(fitted: tuple[Path, Path]) -> Iterator[Service]:
    import stratad.workflows.predict as predict_module

    model, category = fitted
    loads: list[Path] = []
    original = predict_module.load_model

    def counting(path: Path, device: str | None = None) -> Any:
        loads.append(path)
        return original(path, device)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(predict_module, "load_model", counting)
        app = create_app(model)
        with BackgroundServer(app) as server:
            yield Service(server.url, app, model, category, loads)


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def post(
    url: str,
    files: list[tuple[str, str, bytes]],
    content_type: str | None = None,
    origin: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """POST multipart/form-data: ``files`` as (field, file name, bytes)."""
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
            for field, name, data in files
        )
        + f"--{boundary}--\r\n".encode()
    )
    sent = {"Content-Type": content_type or f"multipart/form-data; boundary={boundary}", **(headers or {})}
    if origin is not None:
        sent["Origin"] = origin
    request = urllib.request.Request(url, data=body, headers=sent, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def decode_b64_png(text: str) -> np.ndarray:
    values = cv2.imdecode(np.frombuffer(base64.b64decode(text), np.uint8), cv2.IMREAD_UNCHANGED)
    assert values is not None
    return values


def test_health_and_model(service: Service) -> None:
    from stratad import __version__

    assert get(service.url + "/health") == (200, {"status": "ok"})
    status, info = get(service.url + "/model")
    assert status == 200
    pipe = Pipeline.load(service.model)
    assert info["backbone"] == pipe.config.backbone == "efficientnet_lite0"
    assert info["nodes"] == list(pipe.config.nodes) and len(info["nodes"]) == 2
    assert info["detector"] == "patchcore"
    assert info["image_size"] == 64
    assert info["stratad_version"] == __version__
    assert pipe.calibration_ is not None
    assert info["thresholds"]["method"] == "fpr"
    assert info["thresholds"]["image_threshold"] == pipe.calibration_.image_threshold
    assert info["thresholds"]["pixel_threshold"] == pipe.calibration_.pixel_threshold
    assert info["thresholds"]["target_fpr"] == 0.2
    assert info["limits"] == {"max_upload_mb": 32.0, "max_files": 16, "max_megapixels": 40.0}


def test_predict_one_image_matches_the_pipeline(service: Service) -> None:
    path = service.data / "test" / "spot" / "000.png"
    status, answer = post(service.url + "/predict", [("files", "spot.png", png_bytes(path))])
    assert status == 200, answer
    assert answer["model"] == service.model.name
    assert answer["seconds"] > 0
    (result,) = answer["results"]
    assert result["name"] == "spot.png"
    assert (result["width"], result["height"]) == (64, 64)

    pipe = Pipeline.load(service.model)
    rgb = read_image_rgb(path)
    score, small = pipe.score_image(rgb)
    assert result["score"] == float(score[0])  # exactly: the same path, float32 sent in full
    calibration = pipe.calibration_
    assert calibration is not None
    assert result["normalized_score"] == pytest.approx(float(calibration.normalize(score[0])), abs=1e-12)
    assert result["decision"] == ("defective" if score[0] > calibration.image_threshold else "good")
    assert result["decision"] == "defective"  # a bright square on stripes

    assert small is not None
    full = resize_map(small, (64, 64))
    mask = decode_b64_png(result["mask_png"])
    assert mask.shape == (64, 64) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask == 255, full > calibration.pixel_threshold)
    assert result["defect_pixels"] == int((mask == 255).sum())
    assert result["defect_area"] == result["defect_pixels"] / mask.size

    values = decode_b64_png(result["map_png"])
    assert values.shape == (64, 64) and values.dtype == np.uint16
    assert (result["map_min"], result["map_max"]) == (float(full.min()), float(full.max()))
    step = (result["map_max"] - result["map_min"]) / 65535
    restored = result["map_min"] + values / 65535 * (result["map_max"] - result["map_min"])
    assert np.abs(restored - full).max() <= step

    overlay = Image.open(io.BytesIO(base64.b64decode(result["overlay_jpg"])))
    assert overlay.format == "JPEG"
    assert overlay.width > 64 and overlay.height > 64  # the image, a banner and a colour bar


def test_predict_several_images_keeps_their_order(service: Service) -> None:
    paths = [
        service.data / "test" / "good" / "000.png",
        service.data / "test" / "spot" / "001.png",
        service.data / "test" / "good" / "001.png",
    ]
    wide = np.asarray(Image.open(paths[1]).convert("RGB").resize((96, 48)))
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="JPEG", quality=95)
    files = [("files", p.parent.name + "_" + p.name, png_bytes(p)) for p in paths]
    files.append(("file", "wide.jpg", buffer.getvalue()))  # the other accepted field name
    status, answer = post(service.url + "/predict?overlay=false", files)
    assert status == 200, answer
    results = answer["results"]
    assert [r["name"] for r in results] == ["good_000.png", "spot_001.png", "good_001.png", "wide.jpg"]
    pipe = Pipeline.load(service.model)
    expected = [float(pipe.score_image(read_image_rgb(p))[0][0]) for p in paths]
    assert [r["score"] for r in results[:3]] == expected
    assert results[1]["decision"] == "defective"
    assert all(r["overlay_jpg"] is None for r in results)  # overlay=false
    assert (results[3]["width"], results[3]["height"]) == (96, 48)
    assert decode_b64_png(results[3]["mask_png"]).shape == (48, 96)
    assert results[3]["score"] == float(pipe.score_image(decode_image_bytes(buffer.getvalue()))[0][0])


def test_concurrent_requests_and_the_model_loaded_once(service: Service) -> None:
    path = service.data / "test" / "good" / "000.png"
    data = png_bytes(path)
    answers: list[tuple[int, Any]] = []

    def client() -> None:
        for _ in range(3):
            answers.append(post(service.url + "/predict", [("files", "a.png", data)]))

    model = service.app.state.service.model
    original = model.score_image
    running, most = [0], [0]
    count_lock = threading.Lock()

    def counted(rgb: np.ndarray) -> Any:
        with count_lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.02)  # long enough for another request to arrive meanwhile
            return original(rgb)
        finally:
            with count_lock:
                running[0] -= 1

    model.score_image = counted
    try:
        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        model.score_image = original
    assert [status for status, _ in answers] == [200] * 12
    assert len({answer["results"][0]["score"] for _, answer in answers}) == 1
    assert most[0] == 1  # one forward at a time
    assert service.loads == [service.model]


def test_refused_formats_origins_and_a_busy_service(fitted: tuple[Path, Path], service: Service) -> None:
    good = png_bytes(service.data / "test" / "good" / "000.png")
    # EPS (PostScript): Pillow would hand it to Ghostscript; only image formats are opened
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    got, answer = post(service.url + "/predict", [("files", "x.eps", eps)])
    assert got == 415 and "not an image of an accepted format" in one_line_detail(answer)
    got, answer = post(service.url + "/predict", [("files", "a.png", good)], origin="http://evil.example")
    assert got == 403 and "cross-origin" in one_line_detail(answer)
    own = service.url.split("://", 1)[1].rstrip("/")
    assert post(service.url + "/predict", [("files", "a.png", good)], origin=f"http://{own}")[0] == 200
    # browsers' own header decides when present; behind a proxy the forwarded host counts; ports
    # default by scheme
    url = service.url + "/predict"
    host = own.split(":")[0]
    cases = [
        ({"Sec-Fetch-Site": "cross-site"}, None, 403),
        ({"Sec-Fetch-Site": "same-origin"}, "http://elsewhere.example", 200),
        ({"X-Forwarded-Host": "ad.example.com"}, "https://ad.example.com", 200),
        ({"X-Forwarded-Host": "ad.example.com:8443"}, "https://AD.example.com:8443", 200),
        ({"Host": f"{host}:80"}, f"http://{host}", 200),
        ({"X-Forwarded-Host": "ad.example.com"}, "https://evil.example", 403),
    ]
    for extra, origin, status in cases:
        assert post(url, [("files", "a.png", good)], origin=origin, headers=extra)[0] == status, (
            extra,
            origin,
        )
    # a line-scan image, 2 x 31000: scored, its overlay drawn
    buffer = io.BytesIO()
    Image.fromarray(np.full((2, 31000, 3), 128, np.uint8)).save(buffer, format="PNG")
    got, answer = post(url, [("files", "long.png", buffer.getvalue())])
    assert got == 200 and answer["results"][0]["width"] == 31000 and answer["results"][0]["overlay_jpg"]
    model, _ = fitted
    app = create_app(model, max_concurrent=1)
    gate, entered = threading.Event(), threading.Event()
    original = app.state.service.model.score_image

    def slow(rgb: np.ndarray) -> Any:
        entered.set()
        gate.wait(30)
        return original(rgb)

    app.state.service.model.score_image = slow
    with BackgroundServer(app) as server:
        # a client stuck halfway through its upload holds no scoring slot
        import socket

        address = server.url.split("://", 1)[1].rstrip("/")
        stuck = socket.create_connection((address.rsplit(":", 1)[0], int(address.rsplit(":", 1)[1])))
        stuck.sendall(
            b"POST /predict HTTP/1.1\r\nHost: " + address.encode() + b"\r\n"
            b"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 100000\r\n\r\n--xyz\r\n"
        )
        time.sleep(0.2)
        app.state.service.model.score_image = original
        assert post(server.url + "/predict", [("files", "a.png", good)])[0] == 200
        app.state.service.model.score_image = slow
        stuck.close()
        first: list[tuple[int, Any]] = []
        thread = threading.Thread(
            target=lambda: first.append(post(server.url + "/predict", [("files", "a.png", good)]))
        )
        thread.start()
        assert entered.wait(30)
        got, answer = post(server.url + "/predict", [("files", "a.png", good)])
        gate.set()
        thread.join()
        assert got == 503 and "busy" in one_line_detail(answer)
        assert first[0][0] == 200


def one_line_detail(answer: Any) -> str:
    assert set(answer) == {"detail"}
    detail = answer["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail and "Traceback" not in detail
    return detail


@pytest.mark.parametrize(
    ("files", "status", "words"),
    [
        ([("files", "notes.txt", b"not an image at all\n")], 415, "cannot read image notes.txt"),
        ([("files", "fake.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40)], 415, "cannot read image fake.png"),
        ([("files", "empty.png", b"")], 400, "empty.png is empty"),
        ([], 400, "no image in the request"),
        ([("other", "a.png", b"x")], 400, "no image in the request"),
    ],
)
def test_bad_uploads_get_a_4xx_with_one_line(
    service: Service, files: list[tuple[str, str, bytes]], status: int, words: str
) -> None:
    got, answer = post(service.url + "/predict", files)
    assert got == status
    assert words in one_line_detail(answer)


def test_bad_requests_are_one_line_4xx(service: Service) -> None:
    good = png_bytes(service.data / "test" / "good" / "000.png")
    got, answer = post(service.url + "/predict", [("files", "a.png", good)], content_type="text/plain")
    assert got == 400 and "multipart/form-data" in one_line_detail(answer)
    got, answer = post(
        service.url + "/predict", [("files", "a.png", good)], content_type="multipart/form-data"
    )
    assert got == 400 and "bad upload" in one_line_detail(answer)
    got, answer = post(service.url + "/predict?overlay=maybe", [("files", "a.png", good)])
    assert got == 422 and one_line_detail(answer).startswith("query overlay:")
    got, answer = get(service.url + "/nowhere")
    assert got == 404 and one_line_detail(answer) == "Not Found"
    # a valid image followed by a bad one: nothing is scored, the bad one is named
    got, answer = post(service.url + "/predict", [("files", "a.png", good), ("files", "b.txt", b"hello")])
    assert got == 415 and "b.txt" in one_line_detail(answer)


def test_size_and_count_limits(fitted: tuple[Path, Path]) -> None:
    model, category = fitted
    good = png_bytes(category / "test" / "good" / "000.png")
    app = create_app(model, max_upload_mb=len(good) * 1.5 / 2**20, max_files=2, max_megapixels=0.01)
    with BackgroundServer(app) as server:
        url = server.url + "/predict"
        assert post(url, [("files", "a.png", good)])[0] == 200
        got, answer = post(url, [("files", "big.png", good + b"\0" * len(good))])  # a PNG with trailing bytes
        assert got == 413 and one_line_detail(answer).startswith("big.png is ")
        assert "per image" in answer["detail"]
        got, answer = post(url, [("files", "a.png", good)] * 3)
        assert got == 413 and "at most 2" in one_line_detail(answer)
        # the whole body over its cap (2 files x 1.5 x image + 1 MB), refused before parsing
        got, answer = post(url, [("files", "huge.png", b"\0" * (3 << 20))])
        assert got == 413 and "the request is over" in one_line_detail(answer)
        # 200 x 200 pixels in a few hundred bytes: over 0.01 megapixels, refused from the header
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(buffer, format="PNG")
        got, answer = post(url, [("files", "flat.png", buffer.getvalue())])
        assert got == 413 and "200 x 200 pixels" in one_line_detail(answer)
        assert post(url, [("files", "a.png", good)])[0] == 200  # still serving


def test_unexpected_errors_are_a_one_line_500(fitted: tuple[Path, Path]) -> None:
    model, category = fitted
    app = create_app(model)

    def broken(rgb: np.ndarray) -> Any:
        raise RuntimeError("the accelerator fell off\nsecond line")

    app.state.service.model.score_image = broken
    with BackgroundServer(app) as server:
        good = png_bytes(category / "test" / "good" / "000.png")
        got, answer = post(server.url + "/predict", [("files", "a.png", good)])
        assert got == 500
        assert one_line_detail(answer) == "internal error: RuntimeError: the accelerator fell off second line"
        assert get(server.url + "/health") == (200, {"status": "ok"})


def test_create_app_refuses_bad_settings(fitted: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = fitted
    with pytest.raises(StratadError, match="--max-upload-mb must be a positive number"):
        create_app(model, max_upload_mb=0)
    with pytest.raises(StratadError, match="--max-files must be a positive integer"):
        create_app(model, max_files=0)
    with pytest.raises(StratadError, match="model file not found"):
        create_app(tmp_path / "missing.stratad")


def test_serve_refuses_a_port_in_use(fitted: tuple[Path, Path]) -> None:
    from stratad.serve import serve

    model, _ = fitted
    with BackgroundServer(create_app(model)) as server:
        port = int(server.url.rsplit(":", 1)[1])
        with pytest.raises(StratadError, match=f"cannot listen on 127.0.0.1:{port}: it is in use"):
            serve(model, port=port)


def test_decode_image_bytes_reads_as_files_are_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cases: dict[str, np.ndarray] = {
        "rgb8.png": rng.integers(0, 256, (9, 7, 3), dtype=np.uint8),
        "grey16.png": rng.integers(0, 4096, (9, 7), dtype=np.uint16),  # 12-bit data in 16-bit PNG
        "rgb16.png": rng.integers(0, 65536, (9, 7, 3), dtype=np.uint16),  # Pillow alone drops bits
    }
    for name, values in cases.items():
        path = tmp_path / name
        cv2.imwrite(str(path), values[..., ::-1] if values.ndim == 3 else values)
        for depth in (None, 16):
            np.testing.assert_array_equal(
                decode_image_bytes(path.read_bytes(), depth, name=name), read_image_rgb(path, depth)
            )
    jpeg = tmp_path / "a.jpg"
    Image.fromarray(cases["rgb8.png"]).save(jpeg, quality=90)
    np.testing.assert_array_equal(decode_image_bytes(jpeg.read_bytes()), read_image_rgb(jpeg))
    with pytest.raises(ImageReadError, match=r"^cannot read image notes\.txt: not an image or corrupt$"):
        decode_image_bytes(b"hello", name="notes.txt")
    with pytest.raises(ImageReadError, match=r"^image upload is empty"):
        decode_image_bytes(b"")
    with pytest.raises(ImageReadError, match="above the 8-bit range"):
        decode_image_bytes((tmp_path / "grey16.png").read_bytes(), 8, name="grey16.png")


def test_page_scores_a_dropped_image(service: Service, tmp_path: Path) -> None:
    # a larger copy of a defective image, so the screenshot is readable
    big = tmp_path / "spot_000.png"
    source = Image.open(service.data / "test" / "spot" / "000.png")
    source.resize((320, 320), Image.Resampling.BICUBIC).save(big)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with chromium_page(width=1100, height=1000) as browser:
        page = browser.page
        page.goto(service.url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('patchcore')")
        assert "efficientnet_lite0" in page.inner_text("#model")

        empty = tmp_path / "empty.png"
        empty.write_bytes(b"")
        page.set_input_files("#files", str(empty))  # refused by the page itself: no request at all
        page.wait_for_selector("#error.shown")
        assert page.inner_text("#error") == "empty.png is empty (0 bytes)"
        assert browser.errors == []

        page.set_input_files("#files", str(text))  # refused by the service: shown in the page
        page.wait_for_function("document.getElementById('error').textContent.startsWith('refused')")
        assert page.inner_text("#error").startswith("refused (415): cannot read image notes.txt")
        assert page.query_selector(".result") is None

        page.set_input_files("#files", str(big))
        page.wait_for_selector(".result img.overlay")
        assert not page.is_visible("#error")
        assert page.inner_text(".result .decision") == "defective"
        assert "spot_000.png (320 \u00d7 320)" in page.inner_text(".result h2")
        assert page.inner_text("[data-field='normalised score']") == "1.00"
        area = page.inner_text("[data-field='defect area']")
        assert area.endswith(" px)") and "%" in area
        width = page.eval_on_selector(".result img.overlay", "img => img.complete && img.naturalWidth")
        assert width > 320  # the overlay: the image plus its colour bar
        assert page.inner_text("#status").startswith("scored 1 image in ")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        # the refused upload made the browser log its 415 as a failed resource load; nothing else
        assert [e for e in browser.errors if "status of 415" not in e] == []


def test_the_serve_command_prints_its_url_serves_and_stops_on_ctrl_c(fitted: tuple[Path, Path]) -> None:
    import os
    import queue
    import signal
    import subprocess
    import sys
    import time

    model, _ = fitted
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "stratad", "serve", "--model", str(model), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    stream = proc.stderr
    threading.Thread(target=lambda: [lines.put(x) for x in stream], daemon=True).start()
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "http://" not in line and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "the service exited before it served"
        assert "http://127.0.0.1:" in line, line
        url = line[line.index("http://") :].split()[0].rstrip("/")
        status, body = get(url + "/health")
        assert status == 200 and body == {"status": "ok"}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    bad = subprocess.run(
        [sys.executable, "-m", "stratad", "serve", "--model", str(model.with_name("none.stratad"))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [x for x in bad.stderr.splitlines() if x.strip()]
    assert bad.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), bad.stderr
