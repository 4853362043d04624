from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stratad.errors import ModelFileError
from stratad.export.io import check_output_file, load_tensors, save_tensors


def test_round_trip_and_atomic_failure(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "m.stratad"
    save_tensors(target, {"a": torch.arange(3.0)}, {"kind": "x", "n": 1})
    tensors, meta = load_tensors(target)
    assert torch.equal(tensors["a"], torch.arange(3.0)) and meta["kind"] == "x"
    # A failing write leaves neither a partial target nor a temporary file behind.
    shared = torch.arange(4.0)
    with pytest.raises(RuntimeError):  # safetensors refuses tensors that share memory, mid-write
        save_tensors(tmp_path / "bad.stratad", {"a": shared, "b": shared}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_output_checks(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="is a folder"):
        check_output_file(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ModelFileError, match="cannot write"):
        check_output_file(blocker / "m.stratad")
    check_output_file(tmp_path / "new" / "m.stratad")
    assert (tmp_path / "new").is_dir()
