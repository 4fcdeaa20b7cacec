"""Progress bars of long CLI work (``sync --to``, ``purge``, ``export``): rich on a terminal, nothing otherwise.

A bar is drawn on stderr only when stderr is a terminal, so piped or logged output stays plain
text; the commands print their own summary lines either way.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["Bar", "progress_bar"]


class Bar:
    """One task of a progress display; every method is a no-op when no bar is drawn."""

    def __init__(self, progress: Progress | None, total: float | None, description: str) -> None:
        """Add a task to ``progress`` (``None``: draw nothing)."""
        self._progress = progress
        self._task = None if progress is None else progress.add_task(description, total=total)

    @property
    def shown(self) -> bool:
        """True when a bar is drawn."""
        return self._progress is not None

    def advance(self, amount: float) -> None:
        """Add ``amount`` to what is done."""
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, amount)

    def update(self, completed: float, description: str | None = None) -> None:
        """Set what is done (and optionally the text before the bar)."""
        if self._progress is not None and self._task is not None:
            if description is None:
                self._progress.update(self._task, completed=completed)
            else:
                self._progress.update(self._task, completed=completed, description=description)


@contextmanager
def progress_bar(description: str, total: float | None, *, force: bool | None = None) -> Iterator[Bar]:
    """A progress bar on stderr for the duration of the ``with`` block.

    Args:
        description: the text before the bar.
        total: the amount of work (``None``: unknown, the bar pulses).
        force: draw (True) or not (False) regardless of the terminal; ``None``: only when stderr
            is a terminal.
    """
    show = sys.stderr.isatty() if force is None else force
    if not show:
        yield Bar(None, total, description)
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    with progress:
        yield Bar(progress, total, description)
