"""``stratad serve``: the HTTP inference service (FastAPI under uvicorn).

One process, one worker, the model loaded once when the app is created. Routes:

- ``POST /predict`` -- multipart field ``files`` (one image or several; ``file`` is accepted too),
  query ``overlay=true|false``: per image its score, normalised score, decision and defect area
  (:func:`stratad.decisions.decide_image`, the function ``predict`` uses), the map at the image's
  size as a base64 16-bit PNG with its range, the defect mask as a base64 0/255 PNG, and the
  decision overlay as a base64 JPEG.
- ``GET /health``, ``GET /model`` (what the model is, its thresholds, the limits), ``GET /`` (a
  page to drop images on, :mod:`stratad.serve.page`).

Bad requests are refused before any scoring with a 4xx and ``{"detail": "<one line>"}``: no file
(400), an empty file (400), too many files (413), a file or request body over the size limits
(413), bytes that are not an image (415), bad query parameters (422). Anything unexpected is a 500
with one line (logged as one line too), never a traceback in the response.

Concurrency: decoding and encoding run in the threadpool in parallel (OpenCV and Pillow release
the GIL); the forward pass runs one at a time behind a lock, since torch already spreads one
forward over its own threads and two at once only contend for the same cores.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from stratad.errors import ImageReadError, StratadError

logger = logging.getLogger("stratad.serve")

#: multipart fields that carry images (``files`` for several; ``file`` as many clients name one)
UPLOAD_FIELDS = ("files", "file")
#: room for the multipart headers and boundaries around the files of one request
_ENVELOPE_BYTES = 1 << 20
#: a body over the limit by at most this much is read to its end before the 413 is sent, so the
#: client, still sending, reads the answer instead of a reset connection; beyond, the connection closes
_DRAIN_BYTES = 64 << 20

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RefusedRequest(StratadError):
    """A request the service refuses, with the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one ``POST /predict`` may carry."""

    #: bytes of one image file
    max_upload_bytes: int
    #: image files per request
    max_files: int
    #: pixels of one decoded image (a small PNG can hold a huge image: checked from the header)
    max_pixels: int
    #: requests scored at the same time; more wait for none and get 503 (each holds its images)
    max_concurrent: int = 4

    @property
    def max_body_bytes(self) -> int:
        return self.max_upload_bytes * self.max_files + _ENVELOPE_BYTES


@dataclass
class Upload:
    name: str
    data: bytes


def _one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _display_name(name: str | None, index: int) -> str:
    """An upload's file name as messages and results show it: printable, one line, bounded."""
    if not name:
        return f"upload {index + 1}"
    shown = "".join(c if c.isprintable() else "?" for c in name)
    return shown if len(shown) <= 120 else shown[:117] + "..."


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.3g} MB"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _jsonable(value: Any) -> Any:
    """``describe()`` output as plain JSON (NumPy scalars and arrays, paths, non-finite floats)."""
    return json.loads(json.dumps(value, default=_json_default, allow_nan=True), parse_constant=lambda _: None)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


class InferenceService:
    """The loaded model and what ``/predict`` does with uploads, independent of HTTP."""

    def __init__(self, model: str | Path, device: str | None, limits: Limits) -> None:
        from stratad.workflows.predict import file_sha256, load_model

        path = Path(model).expanduser()
        if not path.is_file():
            raise StratadError(f"model file not found: {path}")
        self.path = path
        self.limits = limits
        self.model = load_model(path, device)
        self.sha256 = file_sha256(path)
        self._lock = threading.Lock()

    # -- /model --
    def description(self) -> dict[str, Any]:
        from stratad import __version__

        calibration = getattr(self.model, "calibration_", None)
        thresholds = None
        if calibration is not None:
            thresholds = {
                "method": calibration.method,
                "image_threshold": calibration.image_threshold,
                "pixel_threshold": calibration.pixel_threshold,
                "target_fpr": calibration.target_fpr,
                "source": calibration.source,
            }
        return _jsonable(
            {
                **self.model.describe(),
                "bit_depth": self.model.config.bit_depth,
                "thresholds": thresholds,
                "file": self.path.name,
                "sha256": self.sha256,
                "stratad_version": __version__,
                "limits": {
                    "max_upload_mb": self.limits.max_upload_bytes / 2**20,
                    "max_files": self.limits.max_files,
                    "max_megapixels": self.limits.max_pixels / 1e6,
                },
            }
        )

    # -- /predict --
    def check(self, uploads: list[Upload]) -> None:
        """Refuse the request before any decoding: no file, too many, empty or too large ones."""
        limits = self.limits
        if not uploads:
            raise RefusedRequest(
                400,
                "no image in the request: send multipart/form-data with one or more files in field 'files'",
            )
        if len(uploads) > limits.max_files:
            raise RefusedRequest(413, f"{len(uploads)} files in one request; at most {limits.max_files}")
        for upload in uploads:
            if not upload.data:
                raise RefusedRequest(400, f"{upload.name} is empty (0 bytes)")
            if len(upload.data) > limits.max_upload_bytes:
                raise RefusedRequest(
                    413,
                    f"{upload.name} is {_mb(len(upload.data))}; the limit is "
                    f"{_mb(limits.max_upload_bytes)} per image (serve --max-upload-mb)",
                )

    def check_header(self, upload: Upload) -> None:
        """From the header alone, before any decoding: an image of an accepted format (415) within
        the pixel and side limits (413)."""
        from PIL import Image, UnidentifiedImageError

        from stratad.data.io import PIL_FORMATS

        limit = f"the limit is {self.limits.max_pixels / 1e6:g} megapixels per image"
        try:
            with Image.open(io.BytesIO(upload.data), formats=PIL_FORMATS) as header:
                width, height = header.size
        except Image.DecompressionBombError:  # Pillow's own cap, ~179 megapixels
            raise RefusedRequest(413, f"{upload.name} has too many pixels; {limit}") from None
        except UnidentifiedImageError:
            raise RefusedRequest(
                415,
                f"cannot read image {upload.name}: not an image of an accepted format "
                "(PNG, JPEG, BMP, TIFF, WebP)",
            ) from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise RefusedRequest(415, f"cannot read image {upload.name}: {_one_line(exc)}") from None
        if width * height > self.limits.max_pixels:
            raise RefusedRequest(413, f"{upload.name} is {width} x {height} pixels; {limit}")

    def decode(self, upload: Upload) -> np.ndarray:
        """The upload as uint8 (H, W, 3), read as the same file on disk would be (415 if not an image)."""
        from stratad.data.io import decode_image_bytes

        self.check_header(upload)
        try:
            return decode_image_bytes(upload.data, self.model.config.bit_depth, name=upload.name)
        except ImageReadError as exc:
            raise RefusedRequest(415, str(exc)) from None

    def predict(self, uploads: list[Upload], overlay: bool = True) -> list[dict[str, Any]]:
        """Check every upload's size and header first (a bad one refuses the request before any
        scoring), then decode, score (one forward at a time) and encode them one after another, so
        a request holds one decoded image at a time; the results in order."""
        self.check(uploads)
        for upload in uploads:
            self.check_header(upload)
        return [self.predict_one(upload.name, self.decode(upload), overlay) for upload in uploads]

    def predict_one(self, name: str, rgb: np.ndarray, overlay: bool = True) -> dict[str, Any]:
        from stratad.decisions import decide_image
        from stratad.report.overlay import decision_overlay, encode_image
        from stratad.workflows.predict import encode_png16

        with self._lock:
            decision = decide_image(self.model, rgb)
        height, width = rgb.shape[:2]
        numbers = decision.as_dict()
        result: dict[str, Any] = {
            "name": name,
            "width": int(width),
            "height": int(height),
            **numbers,
            "normalized_score": _finite(numbers["normalized_score"]),
            "map_png": None,
            "map_min": None,
            "map_max": None,
            "mask_png": None,
            "overlay_jpg": None,
        }
        full = decision.anomaly_map
        if full is not None:
            data, low, high = encode_png16(full)
            result.update(map_png=_b64(data), map_min=low, map_max=high)
        if decision.mask is not None:
            result["mask_png"] = _b64(encode_image(decision.mask.astype(np.uint8) * 255, "png"))
        if overlay and full is not None:
            vmin, vmax = self.colour_range(full)
            calibration = getattr(self.model, "calibration_", None)
            drawn = decision_overlay(
                rgb,
                full,
                vmin,
                vmax,
                score=decision.score,
                normalized=decision.normalized,
                defective=decision.defective,
                mask=decision.mask,
                pixel_threshold=None if calibration is None else calibration.pixel_threshold,
            )
            result["overlay_jpg"] = _b64(encode_image(drawn, "jpg"))
        return result

    def colour_range(self, anomaly_map: np.ndarray) -> tuple[float, float]:
        """The overlay's colour scale. With a pixel threshold it covers the threshold -/+ 4 pixel
        spreads (normalised pixel scores 0.018 to 0.982, the threshold in the middle of the bar),
        the same for every image of the model so that colours compare across requests, widened
        to the map's own range where the map leaves it (else a map wholly over the band would be
        one saturated colour, hiding where its defect is). Without one, the map's own range (a good
        image then shows colours too: read the numbers)."""
        low, high = float(anomaly_map.min()), float(anomaly_map.max())
        calibration = getattr(self.model, "calibration_", None)
        if calibration is not None and calibration.pixel_threshold is not None and calibration.pixel_scale:
            t, s = calibration.pixel_threshold, calibration.pixel_scale
            return min(t - 4.0 * s, low), max(t + 4.0 * s, high)
        return low, high


class _BodyTooLarge(Exception):
    pass


class _Guard:
    """Outermost ASGI layer: caps the request body (from Content-Length and while it streams, before
    multipart parsing spools it), and turns any unexpected exception into a one-line 500."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        limit = self.max_body_bytes

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            if int(declared) <= limit + _DRAIN_BYTES:
                await _drain(receive, limit + _DRAIN_BYTES)
            await _send_json(send, 413, self._too_large())
            return
        received = 0
        more = True

        async def receive_counted() -> Message:
            nonlocal received, more
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                more = bool(message.get("more_body", False))
                if received > limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, receive_counted, send_tracked)
        except _BodyTooLarge:
            if not started:
                if more:
                    await _drain(receive, _DRAIN_BYTES)
                await _send_json(send, 413, self._too_large())
        except Exception as exc:  # the promise: one line, never a traceback
            line = f"internal error: {type(exc).__name__}: {_one_line(exc)}"
            logger.error("%s %s: %s", scope.get("method"), scope.get("path"), line)
            if not started:
                await _send_json(send, 500, line)

    def _too_large(self) -> str:
        return f"the request is over {_mb(self.max_body_bytes)}; send fewer or smaller images"


async def _drain(receive: Receive, budget: int) -> None:
    """Read and drop the rest of a request body, up to ``budget`` bytes."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(
    model: str | Path,
    *,
    device: str | None = None,
    max_upload_mb: float = 32,
    max_files: int = 16,
    max_megapixels: float = 40,
    max_concurrent: int = 4,
) -> FastAPI:
    """The FastAPI app serving ``model`` (a ``.stratad`` or ``.onnx`` file), loaded once, here.

    ``max_upload_mb``: size of one image file; ``max_files``: images per request;
    ``max_megapixels``: pixels of one image (read from its header before decoding);
    ``max_concurrent``: requests scored at once (one more gets 503 at once: each holds an image)."""
    from stratad import __version__
    from stratad.serve.page import PAGE

    if not (isinstance(max_upload_mb, int | float) and math.isfinite(max_upload_mb) and max_upload_mb > 0):
        raise StratadError(f"--max-upload-mb must be a positive number, got {max_upload_mb}")
    if isinstance(max_files, bool) or not isinstance(max_files, int) or max_files < 1:
        raise StratadError(f"--max-files must be a positive integer, got {max_files}")
    if not (isinstance(max_megapixels, int | float) and math.isfinite(max_megapixels) and max_megapixels > 0):
        raise StratadError(f"--max-megapixels must be a positive number, got {max_megapixels}")
    limits = Limits(
        max_upload_bytes=max(1, int(max_upload_mb * 2**20)),
        max_files=max_files,
        max_pixels=max(1, int(max_megapixels * 1e6)),
        max_concurrent=max(1, int(max_concurrent)),
    )
    service = InferenceService(model, device, limits)
    description = service.description()

    app = FastAPI(
        title="stratad",
        version=__version__,
        description="Unsupervised visual anomaly detection: score images with a fitted model.",
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN: no internet here
        redoc_url=None,
    )
    app.state.service = service

    @app.exception_handler(RefusedRequest)
    async def refused(request: Request, exc: RefusedRequest) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": _one_line(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = " ".join(str(p) for p in first.get("loc", ()))
        line = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
        return JSONResponse({"detail": _one_line(line)}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/model")
    def model_info() -> dict[str, Any]:
        return description

    busy = threading.BoundedSemaphore(limits.max_concurrent)

    @app.post("/predict")
    async def predict(request: Request, overlay: bool = True) -> dict[str, Any]:
        """Score one image or several (multipart field ``files``). The body is read (files over 1 MB
        spooled to disk by Starlette) before a request is refused as cross-site or busy, so that
        the client reads the answer instead of a reset, and a slow upload holds no scoring slot."""
        started = time.perf_counter()
        try:
            form = await request.form(max_files=limits.max_files, max_fields=64)
        except HTTPException as exc:  # a malformed body or too many parts: said in one line
            if "too many files" in str(exc.detail).lower():
                raise RefusedRequest(
                    413, f"more than {limits.max_files} files in one request; send at most {limits.max_files}"
                ) from None
            raise RefusedRequest(400, f"bad upload: {_one_line(exc.detail)}") from None
        try:
            _same_origin(request)
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if not form and kind != "multipart/form-data":
                raise RefusedRequest(
                    400,
                    "send the images as multipart/form-data in field 'files' "
                    f"(got {kind or 'no content type'})",
                )
            if not busy.acquire(blocking=False):
                raise RefusedRequest(
                    503, f"busy: {limits.max_concurrent} requests are being scored; retry shortly"
                )
            try:
                uploads: list[Upload] = []
                for field in UPLOAD_FIELDS:
                    for item in form.getlist(field):
                        if not isinstance(item, UploadFile):
                            raise RefusedRequest(400, f"field {field!r} must be a file, not text")
                        name = _display_name(item.filename, len(uploads))
                        uploads.append(Upload(name, await item.read()))
                results = await run_in_threadpool(service.predict, uploads, overlay)
            finally:
                busy.release()
        finally:
            await form.close()
        return {"model": service.path.name, "results": results, "seconds": time.perf_counter() - started}

    app.add_middleware(_Guard, max_body_bytes=limits.max_body_bytes)
    return app


def _same_origin(request: Request) -> None:
    """Refuse a browser's cross-site POST (a page on another site making this service work).

    Browsers send ``Sec-Fetch-Site``, which a page cannot forge: ``same-origin`` (this service's own
    page) and ``none`` (typed by the user) pass, anything else is refused. Without it, an ``Origin``
    header must name the host the request was sent to (``X-Forwarded-Host`` behind a proxy, else
    ``Host``; scheme default ports filled in, case ignored). Clients that send neither (curl,
    scripts) are not a browser's cross-site request and pass."""
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    if site is not None:
        if site.lower() in ("same-origin", "none"):
            return
        raise RefusedRequest(403, f"cross-site request ({_one_line(site, 40)}) refused")
    if origin is None:
        return
    parts = urlsplit(origin)
    scheme = (parts.scheme or "http").lower()
    wanted = _host_port(
        f"{parts.hostname or ''}:{parts.port}" if parts.port else parts.hostname or "", scheme
    )
    for header in ("x-forwarded-host", "host"):
        value = request.headers.get(header)
        if value and _host_port(value.split(",")[0].strip(), scheme) == wanted:
            return
    raise RefusedRequest(403, f"cross-origin request from {_one_line(origin, 120)} refused")


def _host_port(host: str, scheme: str) -> tuple[str, int]:
    """(host, port) of a Host header value or an origin's netloc, the scheme's port by default."""
    default = 443 if scheme == "https" else 80
    parsed = urlsplit(f"//{host}")
    try:
        port = parsed.port or default
    except ValueError:
        port = -1
    return (parsed.hostname or "").lower(), port


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port), or one line saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StratadError(f"cannot serve on host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        reason = "it is in use; pick another --port" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise StratadError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _server(app: Any) -> Any:
    import uvicorn

    config = uvicorn.Config(app, workers=1, log_level="warning", access_log=False, lifespan="off")
    return uvicorn.Server(config)


def serve(
    model: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    on_ready: Callable[[str], None] | None = None,
    **kw: Any,
) -> None:
    """Serve ``model`` on ``host:port`` until interrupted (one uvicorn worker, log level warning).

    The socket is bound first (a port in use is one :class:`StratadError`, before the model is
    loaded), then the model is loaded once (:func:`create_app`, keywords ``kw``); ``on_ready`` is
    called with the service's URL (the real port when ``port`` is 0) once it accepts connections."""
    sock = _bind(host, port)
    try:
        app = create_app(model, **kw)
        server = _server(app)
        if on_ready is not None:
            on_ready(_url(sock))  # the socket listens already: connections wait in its backlog
        server.run(sockets=[sock])
    finally:
        sock.close()


class BackgroundServer:
    """The service running in a thread of this process (tests, notebooks): ``url``, ``stop()``;
    also a context manager."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self._sock = _bind(host, port)
        self.url = _url(self._sock)
        self._server = _server(app)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="stratad-serve", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise StratadError("the service did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
