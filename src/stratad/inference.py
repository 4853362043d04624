"""The inference chain as one ``nn.Module``: node extractor -> detector module -> map head.

:class:`InferenceModel` takes images in [0, 1] at the network size (the backbone's normalisation is
inside, in the extractor) and returns image scores and maps at that size, smoothed as the pipeline
smooths them. ``stratad export`` writes it to ONNX (:func:`export_onnx`), with a dynamic batch axis,
and checks the exported file against the pipeline on real images with onnxruntime.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from stratad.errors import StratadError

if TYPE_CHECKING:
    from stratad.pipeline import Pipeline


class ExportError(StratadError):
    """A pipeline that cannot be expressed as one module, or an export that does not match."""


class MapHead(nn.Module):
    """Bilinear upsampling of (N, h, w) maps to the input size and Gaussian smoothing, as one
    separable linear operator per axis (:func:`stratad.pipeline.postprocess_maps`) held in buffers."""

    rows: torch.Tensor
    cols: torch.Tensor

    def __init__(self, grid: tuple[int, int], size: int, sigma: float) -> None:
        super().__init__()
        from stratad.pipeline import _smoothing_operator

        self.register_buffer("rows", _smoothing_operator(grid[0], size, sigma).float())
        self.register_buffer("cols", _smoothing_operator(grid[1], size, sigma).float())

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.rows, maps), self.cols.T)


class InferenceModel(nn.Module):
    """``images (N, 3, S, S) in [0, 1] -> (image scores (N,), maps (N, S, S))``; detectors without maps
    return the scores alone."""

    def __init__(self, extractor: nn.Module, detector: nn.Module, head: MapHead | None) -> None:
        super().__init__()
        self.extractor = extractor
        self.detector = detector
        self.head = head

    def forward(self, images: torch.Tensor) -> Any:
        scores, maps = self.detector(self.extractor(images))
        if self.head is None or maps is None:
            return scores
        return scores, self.head(maps)


def inference_model(pipeline: Pipeline) -> InferenceModel:
    """The fitted pipeline as one module (on the CPU)."""
    c = pipeline.config
    if not pipeline.fitted_:
        raise ExportError("the pipeline is not fitted")
    if c.patch_size:
        raise ExportError(
            "patch mode (--patch-size) encodes every patch in its own backbone pass, which is not one "
            "module; export a model fitted without it"
        )
    extractor = pipeline.extractor
    from stratad.detectors.modules import DetectorModule

    detector: DetectorModule = pipeline.detector.module(c.nodes)  # type: ignore[assignment]
    with torch.no_grad():
        # The traced form, run once: a detector mode that cannot be exported says so here.
        probe = torch.full((1, 3, c.image_size, c.image_size), 0.5)
        _, maps = detector.traced(extractor(probe))
    head = (
        None
        if maps is None
        else MapHead((int(maps.shape[-2]), int(maps.shape[-1])), c.image_size, c.smoothing_sigma)
    )
    return InferenceModel(extractor, detector, head).eval()


#: Largest relative difference (max |a - b| / max |a|) allowed between the exported model and the
#: pipeline, for scores and for maps.
PARITY_TOLERANCE = 1e-4


def export_model(model: str | Path, out: str | Path, check: bool = True) -> dict[str, float]:
    """``stratad export``: load a ``.stratad`` model file and write it as ONNX (see :func:`export_onnx`);
    the output path is checked before the model is loaded."""
    from stratad.export.io import check_output_file
    from stratad.pipeline import Pipeline

    check_output_file(Path(out), "model.onnx")
    return export_onnx(Pipeline.load(model, device="cpu"), out, check=check)


def export_onnx(
    pipeline: Pipeline, path: str | Path, opset: int = 17, check: bool = True
) -> dict[str, float]:
    """Write the pipeline to an ONNX file: input ``images`` (N, 3, S, S) float32 in [0, 1], outputs
    ``scores`` (N,) and, for detectors with maps, ``maps`` (N, S, S); the batch axis is dynamic. The
    pipeline's settings are in the file's metadata (``stratad``). With ``check``, the file is run
    with onnxruntime on a batch of 3 seeded random images and compared with the pipeline before it
    is moved into place (returns the relative differences); a mismatch is an :class:`ExportError`.

    The TorchScript-based exporter is used (``dynamo=False``): 0.2 s against 4.5 s for
    ``torch.export`` on EfficientNet-Lite0, with the same graph for these static shapes.
    """
    import json
    import warnings

    from stratad.export.io import atomic_write

    model = inference_model(pipeline)
    size = pipeline.config.image_size
    example = torch.rand(2, 3, size, size)
    outputs = ["scores", "maps"] if model.head is not None else ["scores"]
    axes = {"images": {0: "batch"}, **{name: {0: "batch"} for name in outputs}}
    parity: dict[str, float] = {}

    def write(tmp: str) -> None:
        import onnx

        with warnings.catch_warnings(), torch.no_grad():
            # Shapes are static per export (one image size): the tracer's notes on Python ints and
            # the exporter's deprecation notice say nothing the user can act on.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                tmp,
                input_names=["images"],
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
        graph = onnx.load(tmp)
        entry = graph.metadata_props.add()
        entry.key, entry.value = (
            "stratad",
            json.dumps(
                pipeline.describe()
                | {"smoothing_sigma": pipeline.config.smoothing_sigma, "bit_depth": pipeline.config.bit_depth}
            ),
        )
        onnx.save(graph, tmp)
        if check:
            parity.update(check_parity(pipeline, tmp))

    atomic_write(path, write)
    return parity


def check_parity(
    pipeline: Pipeline, path: str | Path, images: torch.Tensor | None = None
) -> dict[str, float]:
    """Relative differences between the pipeline's scores / maps and the ONNX file's on ``images``
    (default: 3 seeded random images); raises :class:`ExportError` above :data:`PARITY_TOLERANCE`."""
    size = pipeline.config.image_size
    if images is None:
        images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    scores, maps = pipeline.score_images(images)
    onnx_scores, onnx_maps = onnx_predict(onnx_session(path), images)
    result = {"scores": max_relative_difference(scores, onnx_scores)}
    if maps is not None and onnx_maps is not None:
        result["maps"] = max_relative_difference(maps, onnx_maps)
    worst = max(result.values())
    if not worst <= PARITY_TOLERANCE:
        raise ExportError(
            f"the exported model differs from the pipeline by {worst:.2e} (relative), more than "
            f"{PARITY_TOLERANCE:g}; nothing was written"
        )
    return result


def onnx_session(path: str | Path) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover  (a declared dependency)
        raise ExportError("onnxruntime is not installed: pip install onnxruntime") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_predict(session: Any, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores (N,) and maps (N, S, S) (None without maps) of images in [0, 1] from an ONNX session."""
    outputs = session.run(None, {"images": images.float().numpy()})
    return outputs[0], (outputs[1] if len(outputs) > 1 else None)


def max_relative_difference(reference: np.ndarray, other: np.ndarray) -> float:
    """max |a - b| / max |a|: the parity measure of exported models (scale-free, no zero division)."""
    scale = float(np.abs(reference).max()) or 1.0
    return float(np.abs(reference - other).max()) / scale


class OnnxModel:
    """An exported ``.onnx`` model run with onnxruntime, with the pipeline's prediction interface
    (``predict`` on image files, ``config.image_size`` / ``bit_depth`` / ``batch_size``), so that
    ``stratad predict`` checks exactly the file that is deployed."""

    def __init__(self, path: str | Path) -> None:
        import json
        from types import SimpleNamespace

        import onnx

        from stratad.errors import ModelFileError

        source = Path(path)
        if not source.is_file():
            raise ModelFileError(f"model file not found: {source}")
        try:
            graph = onnx.load(str(source), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError, ValueError, ... for a damaged file
            raise ModelFileError(f"{source} is not an ONNX model ({type(exc).__name__})") from None
        meta = {p.key: p.value for p in graph.metadata_props}
        try:
            settings = json.loads(meta["stratad"])
            self.config = SimpleNamespace(
                image_size=int(settings["image_size"]),
                bit_depth=settings.get("bit_depth"),
                batch_size=16,
                detector=settings.get("detector"),
            )
        except (KeyError, ValueError, TypeError):
            raise ModelFileError(
                f"{source} was not exported by `stratad export` (no stratad settings)"
            ) from None
        self.calibration_ = None
        if settings.get("calibration") is not None:
            from stratad.metrics.thresholds import Calibration

            try:
                self.calibration_ = Calibration.from_dict(settings["calibration"])
            except StratadError as exc:
                raise ModelFileError(f"{source} holds an unusable calibration: {exc}") from None
        self.path = source
        self.session = onnx_session(source)

    def describe(self) -> dict[str, Any]:
        return {
            "detector": self.config.detector,
            "image_size": self.config.image_size,
            "onnx": str(self.path),
            "calibration": None if self.calibration_ is None else self.calibration_.to_dict(),
        }

    def score_image(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One decoded uint8 (H, W, 3) image: score (1,) and map (S, S) or None, as the pipeline's."""
        from stratad.data.io import image_to_tensor

        score, anomaly_map = onnx_predict(self.session, image_to_tensor(rgb, self.config.image_size)[None])
        return score.astype(np.float32).reshape(1), None if anomaly_map is None else anomaly_map[0]

    def imap_images(self, work: Any, items: Any) -> Any:
        """``work(item) for item in items`` one after another: onnxruntime runs each call on its own
        threads."""
        return (work(item) for item in items)

    def predict(self, images: Any, progress: Any = None) -> Any:
        """Scores and maps of image files, one image per call (a score independent of its batch-mates)."""
        from stratad.data.io import read_image_rgb
        from stratad.pipeline import Prediction, _path_of

        scores, maps, sizes = [], [], []
        for item in images:
            rgb = read_image_rgb(_path_of(item), self.config.bit_depth)
            score, anomaly_map = self.score_image(rgb)
            scores.append(score)
            if anomaly_map is not None:
                maps.append(anomaly_map[None].astype(np.float32))
            sizes.append((rgb.shape[0], rgb.shape[1]))
            if progress is not None:
                progress(1)
        return Prediction(
            [_path_of(i) for i in images],
            np.concatenate(scores),
            np.concatenate(maps) if maps else None,
            sizes,
        )
