"""The README's first command: the offline demo writes models, metrics, overlays and HTML reports."""

from __future__ import annotations

import json
from pathlib import Path


def test_the_demo_runs_offline_and_writes_what_the_readme_says(tmp_path: Path) -> None:
    from stratad.demo import TEXTURES, run_demo

    results = run_demo(tmp_path, progress=False)
    assert set(results) == set(TEXTURES)
    assert results["brick"]["p_h"] > 0.95  # a pasted patch on brick is plain to see
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(results))
    for texture in TEXTURES:
        assert (tmp_path / f"{texture}.stratad").is_file()
        page = (tmp_path / "report" / texture / "index.html").read_text(encoding="utf-8")
        assert f"demo: {texture}" in page
        assert len(list((tmp_path / "report" / texture / "panels").glob("*_overlay.jpg"))) == 40
        assert list((tmp_path / "overlays" / texture).glob("*_overlay.png"))
