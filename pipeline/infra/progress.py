"""Progress of a long step: rich's bar on a terminal; in a log (stdout not a terminal: CI, ``nohup``,
``> log``, a cluster job) a plain line at least every ``interval`` seconds and one at the end, with no
control codes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

LOG_INTERVAL_S = 30.0


def is_terminal() -> bool:
    """Whether our output goes to a terminal (rich's own test, so that bars and plain lines never mix)."""
    from rich import get_console

    return get_console().is_terminal


def fmt_elapsed(seconds: float) -> str:
    """``95`` -> ``1 min 35 s``; under a minute ``42 s``."""
    s = int(round(seconds))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


class LogTicker:
    """Calls ``line()`` and prints what it returns every ``interval`` seconds from a background thread
    (the first after ``interval``), and once more on exit. For logs, not terminals."""

    def __init__(self, line: Callable[[], str], interval: float = LOG_INTERVAL_S) -> None:
        self.line, self.interval = line, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            print(self.line(), flush=True)

    def __enter__(self) -> LogTicker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        print(self.line(), flush=True)


class StepProgress:
    """``with StepProgress("evaluate", total=40, unit="tasks") as p: ... p.advance()``.

    A rich bar on a terminal; plain lines ``evaluate: 12/40 tasks, 1 min 33 s`` in a log. ``enabled=False``
    shows nothing. ``detail()`` may add text to each plain line.
    """

    def __init__(
        self,
        label: str,
        total: int,
        unit: str,
        completed: int = 0,
        enabled: bool = True,
        interval: float = LOG_INTERVAL_S,
        transient: bool = True,
        detail: Callable[[], str] | None = None,
    ) -> None:
        self.label, self.total, self.unit, self.done = label, total, unit, completed
        self.enabled, self.interval, self.transient, self.detail = enabled, interval, transient, detail
        self.t0 = time.perf_counter()
        self._bar: Any = None
        self._task: Any = None
        self._ticker: LogTicker | None = None

    def line(self) -> str:
        extra = self.detail() if self.detail else ""
        return (
            f"{self.label}: {self.done}/{self.total} {self.unit}{', ' + extra if extra else ''}, "
            f"{fmt_elapsed(time.perf_counter() - self.t0)}"
        )

    def __enter__(self) -> StepProgress:
        if not self.enabled:
            return self
        if is_terminal():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn(self.label),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TimeRemainingColumn(),
                transient=self.transient,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, completed=self.done)
        else:
            self._ticker = LogTicker(self.line, self.interval).__enter__()
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
        if self._ticker is not None:
            self._ticker.__exit__(exc_type, exc, tb)
