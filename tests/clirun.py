"""Run the ``stratad`` command line in-process (fast: torch is imported once) as a user meets it."""

from __future__ import annotations

import contextlib
import io
import sys
import traceback
from dataclasses import dataclass


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def stratad(*args: str) -> CliResult:
    """``stratad ARGS`` through the real entry point (:func:`stratad.cli.main`), output captured."""
    from stratad.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["stratad", *args]
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except Exception:  # what a user would see: a traceback and exit code 1
                traceback.print_exc()
                code = 1
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
    if isinstance(code, str):  # sys.exit("message") prints the message and exits 1
        err.write(code + "\n")
        code = 1
    return CliResult(int(code or 0), out.getvalue(), err.getvalue())


def error_line(result: CliResult) -> str:
    """The one ``error:`` line of a failed command; fails the test on a traceback or a success."""
    text = result.stdout + result.stderr
    assert result.returncode != 0, f"expected a failure, got exit 0:\n{text}"
    assert "Traceback" not in text, text
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().endswith(errors[0]), result.stderr
    return errors[0]
