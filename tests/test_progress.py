"""Long work shows progress also when standard error is a file or a pipe (plain lines, not a bar)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from stratad import _progress


def test_progress_is_plain_lines_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(_progress, "console", Console(file=stream, force_terminal=False))
    monkeypatch.setattr(_progress, "LOG_INTERVAL_S", 0.0)
    with _progress.progress_bar("extracting features", 4) as advance:
        for _ in range(4):
            advance(1)
    with _progress.count_progress("scoring nodes") as update:
        update("blocks.2", 1, 3)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 7  # a line per step (interval 0) and one at the end, for each bar
    assert [line.split(",")[0] for line in lines[:5]] == [
        "extracting features: 1/4 (25%)",
        "extracting features: 2/4 (50%)",
        "extracting features: 3/4 (75%)",
        "extracting features: 4/4 (100%)",
        "extracting features: 4/4 (100%)",
    ]
    assert lines[-1].startswith("scoring nodes: 1/3 (33%) blocks.2, ")
    assert "\x1b" not in stream.getvalue()  # no terminal control codes in a log file


def test_lines_are_throttled(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(_progress, "console", Console(file=stream, force_terminal=False))
    with _progress.progress_bar("extracting features", 1000) as advance:
        for _ in range(1000):
            advance(1)
    assert stream.getvalue().splitlines() == [stream.getvalue().splitlines()[-1]]  # only the final line
    assert stream.getvalue().startswith("extracting features: 1000/1000 (100%)")
