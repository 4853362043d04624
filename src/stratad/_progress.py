"""Rich progress bars for long work, silent when disabled (tests, library use)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

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


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; a no-op when disabled."""
    if not enabled:
        yield lambda n: None
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
    with Progress(*_columns(), TextColumn("{task.fields[label]}"), console=console) as bar:
        task = bar.add_task(description, total=None, label="")
        yield lambda label, done, total: bar.update(task, completed=done, total=total, label=label)
