"""Rich progress bars for long work, silent when disabled (tests, library use)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, soft_wrap=True)
#: results (tables) go to standard output so they can be piped; progress and notes to stderr
results = Console(width=160)


def _columns() -> tuple[ProgressColumn, ...]:
    return (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


#: Seconds between two lines of the plain log written when standard error is not a terminal.
LOG_INTERVAL_S = 10.0


class LineLog:
    """Progress as plain lines (``extracting features: 120/571 (21%), 3.1 s``) for a log file or a
    pipe, where a live bar would show nothing until the end: one line at most every
    :data:`LOG_INTERVAL_S` seconds, and one when the work ends. Thread-safe (predict's workers)."""

    def __init__(self, description: str, total: int | None = None) -> None:
        import threading

        self.description, self.total = description, total
        self.done, self.label = 0, ""
        self.start = self.last = time.monotonic()
        self._lock = threading.Lock()

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            self._maybe_write()

    def update(self, label: str, done: int, total: int) -> None:
        with self._lock:
            self.label, self.done, self.total = label, done, total
            self._maybe_write()

    def _maybe_write(self) -> None:
        now = time.monotonic()
        if now - self.last >= LOG_INTERVAL_S:
            self.last = now
            self.write()

    def write(self) -> None:
        if self.total:
            counted = f"{self.done}/{self.total} ({100.0 * self.done / self.total:.0f}%)"
        else:
            counted = str(self.done)
        label = f" {self.label}" if self.label else ""
        elapsed = time.monotonic() - self.start
        print(f"{self.description}: {counted}{label}, {elapsed:.1f} s", file=console.file, flush=True)


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; a no-op when disabled; plain log lines when stderr is not a terminal."""
    if not enabled:
        yield lambda n: None
        return
    if not console.is_terminal:
        log = LineLog(description, total)
        yield log.advance
        log.write()
        return
    with Progress(*_columns(), console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def count_progress(description: str, enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """Yield ``update(label, done, total)`` for work whose total is only known once it starts."""
    if not enabled:
        yield lambda label, done, total: None
        return
    if not console.is_terminal:
        log = LineLog(description)
        yield log.update
        log.write()
        return
    with Progress(*_columns(), TextColumn("{task.fields[label]}"), console=console) as bar:
        task = bar.add_task(description, total=None, label="")
        yield lambda label, done, total: bar.update(task, completed=done, total=total, label=label)


class Reporter:
    """How a workflow reports long work: progress bars (plain log lines when standard error is not
    a terminal) and one-line notes on standard error. ``Reporter()`` is silent (library use, tests);
    the command line passes ``Reporter(bars=..., notes=True)``."""

    def __init__(self, bars: bool = False, notes: bool = False) -> None:
        self.bars, self.notes = bars, notes

    def bar(self, description: str, total: int) -> AbstractContextManager[Callable[[int], None]]:
        return progress_bar(description, total, self.bars)

    def count(self, description: str) -> AbstractContextManager[Callable[[str, int, int], None]]:
        return count_progress(description, self.bars)

    def status(self, description: str) -> AbstractContextManager[Any]:
        return console.status(description) if self.bars and console.is_terminal else nullcontext()

    def note(self, text: str) -> None:
        if self.notes:
            console.print(text)
