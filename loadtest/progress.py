"""Progress on stderr: a live bar on a terminal, a plain line every few seconds into a log or pipe.

stdout is left alone, so ``--json`` output stays one object.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

__all__ = ["Bar"]

PLAIN_EVERY = 5.0  # seconds between plain lines: often enough to see it move, rarely enough to read a CI log


class Bar:
    """``with Bar("burst", 500) as bar: bar.update(done, "signed 3, in flight 40")``."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.live = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.last_line = self.t0
        self.done = 0
        self.note = ""
        self._progress: Any = None

    def __enter__(self) -> Bar:
        if self.live:  # rich is imported only here: every other `conclave` command builds this parser too
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("{task.fields[note]}"),
                                      console=Console(stderr=True), transient=False)
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total, note="")
        return self

    def update(self, done: int, note: str = "") -> None:
        self.done, self.note = done, note
        if self._progress is not None:
            self._progress.update(self._task, completed=done, note=note)
        elif time.monotonic() - self.last_line >= PLAIN_EVERY:
            self._line()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()
        else:
            self._line()

    def _line(self) -> None:
        self.last_line = time.monotonic()
        note = f" {self.note}" if self.note else ""
        print(f"{self.label}: {self.done}/{self.total}{note} ({self.last_line - self.t0:.0f}s)", file=sys.stderr,
              flush=True)
