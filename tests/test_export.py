"""Inference modules and ONNX export: the same scores and maps as the pipeline, batch axis dynamic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stratad import inference
from stratad.data import load_dataset
from stratad.inference import (
    ExportError,
    export_onnx,
    inference_model,
    max_relative_difference,
    onnx_predict,
    onnx_session,
)
from stratad.pipeline import Pipeline
from tests.clirun import error_line, stratad

EXPORTABLE = {
    "patchcore": {"nodes": ["blocks.2", "blocks.3"], "detector_params": {"coreset_size": 100}},
    "padim": {"nodes": ["blocks.1", "blocks.2"]},
    "gaussian": {"nodes": ["blocks.3", "blocks.5"]},
    "dn2": {"nodes": ["global_pool"]},
    "spade": {"nodes": ["blocks.2", "blocks.3", "global_pool"], "detector_params": {"image_neighbours": 4}},
    "gde": {"nodes": ["blocks.3", "blocks.4"]},
    "simplenet": {
        "nodes": ["blocks.2", "blocks.3"],
        "detector_params": {"epochs": 3, "hidden": 32, "node_dim": 64, "target_dim": 64},
    },
    "fastflow": {"nodes": ["blocks.2", "blocks.3"], "detector_params": {"steps": 5, "flow_steps": 2}},
    "ast": {
        "nodes": ["blocks.2", "blocks.3"],
        "detector_params": {"epochs": 2, "student_hidden": 16, "student_blocks": 1, "teacher_hidden": 8},
    },
}


def _fitted(tiny_mvtec: Path, detector: str, **extra: object) -> tuple[Pipeline, torch.Tensor]:
    split = load_dataset(tiny_mvtec, "mvtec")
    kwargs = {**EXPORTABLE.get(detector, {}), **extra}
    pipe = Pipeline(detector=detector, image_size=64, **kwargs).fit(split.train)  # type: ignore[arg-type]
    images = torch.cat([batch for batch, _ in pipe._batches(split.test)])
    return pipe, images


@pytest.mark.parametrize("detector", sorted(EXPORTABLE))
def test_module_and_onnx_match_the_pipeline(tiny_mvtec: Path, tmp_path: Path, detector: str) -> None:
    pipe, images = _fitted(tiny_mvtec, detector)
    scores, maps = pipe.score_images(images)
    # The module's matrix-product nearest neighbours against faiss, on the real test images.
    with torch.no_grad():
        model = inference_model(pipe)
        out = model.detector.traced(model.extractor(images))
        out = (out[0], model.head(out[1])) if out[1] is not None else out[0]
    module_scores = (out[0] if isinstance(out, tuple) else out).numpy()
    assert max_relative_difference(scores, module_scores) < 1e-5
    if maps is not None:
        assert max_relative_difference(maps, out[1].numpy()) < 1e-5
    parity = export_onnx(pipe, tmp_path / "m.onnx")
    assert max(parity.values()) < 1e-4
    session = onnx_session(tmp_path / "m.onnx")
    for batch in (images[:1], images):  # the batch axis is dynamic
        onnx_scores, onnx_maps = onnx_predict(session, batch)
        assert onnx_scores.shape == (len(batch),)
        assert max_relative_difference(scores[: len(batch)], onnx_scores) < 1e-4
        if maps is not None:
            assert onnx_maps is not None and onnx_maps.shape == (len(batch), 64, 64)
            assert max_relative_difference(maps[: len(batch)], onnx_maps) < 1e-4
        else:
            assert onnx_maps is None


def test_what_cannot_be_exported_says_why(tiny_mvtec: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    reweighted, _ = _fitted(
        tiny_mvtec, "patchcore", detector_params={"coreset_size": 50, "reweight_neighbours": 3}
    )
    with pytest.raises(Exception, match="cannot be exported"):
        export_onnx(reweighted, out / "s.onnx")
    patches, _ = _fitted(tiny_mvtec, "gde", nodes=["blocks.6"], patch_size=32, patch_stride=16)
    with pytest.raises(ExportError, match="patch mode"):
        export_onnx(patches, out / "g.onnx")
    assert not out.exists() or not list(out.iterdir())


def test_a_mismatch_writes_nothing(tiny_mvtec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pipe, _ = _fitted(tiny_mvtec, "patchcore")
    monkeypatch.setattr(inference, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(ExportError, match="nothing was written"):
        export_onnx(pipe, tmp_path / "out" / "m.onnx")
    assert not list((tmp_path / "out").iterdir())  # no model, no temporary file


def test_export_command(tiny_mvtec: Path, tmp_path: Path) -> None:
    pipe, images = _fitted(tiny_mvtec, "patchcore")
    pipe.save(tmp_path / "m.stratad")
    done = stratad("export", "--model", str(tmp_path / "m.stratad"), "--out", str(tmp_path / "m.onnx"))
    assert done.returncode == 0, done.stderr
    assert "largest relative difference" in done.stderr
    scores, _ = onnx_predict(onnx_session(tmp_path / "m.onnx"), images)
    np.testing.assert_allclose(scores, pipe.score_images(images)[0], rtol=1e-4)
    assert "is a folder" in error_line(
        stratad("export", "--model", str(tmp_path / "m.stratad"), "--out", str(tmp_path))
    )


def test_predict_runs_the_exported_file(tiny_mvtec: Path, tmp_path: Path) -> None:
    pipe, _ = _fitted(tiny_mvtec, "patchcore")
    pipe.save(tmp_path / "m.stratad")
    export_onnx(pipe, tmp_path / "m.onnx")
    spot = str(tiny_mvtec / "test" / "spot")
    for name in ("m.stratad", "m.onnx"):
        done = stratad(
            "predict",
            "--model",
            str(tmp_path / name),
            spot,
            "--out",
            str(tmp_path / f"out_{name}"),
            "--maps",
            "npy",
        )
        assert done.returncode == 0, done.stderr
    from tests.test_reliability import _rows

    torch_rows, onnx_rows = (_rows(tmp_path / f"out_{n}" / "scores.csv") for n in ("m.stratad", "m.onnx"))
    np.testing.assert_allclose(
        [float(r["score"]) for r in onnx_rows], [float(r["score"]) for r in torch_rows], rtol=1e-4
    )
    a, b = (np.load(tmp_path / f"out_{n}" / "000.png.npy") for n in ("m.stratad", "m.onnx"))
    assert max_relative_difference(a, b) < 1e-4
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert "is not an ONNX model" in error_line(
        stratad("predict", "--model", str(tmp_path / "bad.onnx"), spot, "--out", str(tmp_path / "o"))
    )
