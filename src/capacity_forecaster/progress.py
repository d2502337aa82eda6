"""Progress of long work: a rich progress bar on a terminal, a periodic INFO log line everywhere else.

Where it shows is decided by rich's console, the one Kedro's log handler writes to (stdout):

- a terminal (``console.is_terminal``): a transient bar per loop, nested loops as extra rows of one display;
  log records printed meanwhile scroll above it and the bars vanish when the work ends.
- anything else (CI, SageMaker job logs, a pipe or file, a notebook, pytest's capture): INFO lines on the
  ``capacity_forecaster.progress`` logger, one at every further 10 % of a loop's items (at most one per 10 s),
  one after 30 s without a line, and one when the loop ends. Tests see them only when they capture logs.

``FORCE_COLOR`` / ``TTY_COMPATIBLE`` force rich's terminal detection either way.
"""

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import rich
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
LOG_EVERY_FRACTION = 0.1
LOG_EVERY_SECONDS = 30.0
LOG_MIN_GAP_SECONDS = 10.0


def on_terminal() -> bool:
    """Whether progress is drawn as bars (rich's console is a terminal) rather than logged."""
    return rich.get_console().is_terminal


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 05 s`` or ``1 h 02 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class _LogReporter:
    """Logs a loop's progress: at its end, at every further ``LOG_EVERY_FRACTION`` of ``total`` (at least
    ``LOG_MIN_GAP_SECONDS`` apart) and after ``LOG_EVERY_SECONDS`` without a line."""

    def __init__(self, description: str, total: int | None, unit: str, clock: Callable[[], float]):
        self.description, self.total, self.unit, self.clock = description, total, unit, clock
        self.done, self.state = 0, ""
        self.started = self.last_line = clock()
        self.logged_step, self.logged_done = 0, 0

    def _step(self) -> int:
        return math.floor(self.done / self.total / LOG_EVERY_FRACTION + 1e-9) if self.total else 0

    def advance(self, n: int) -> None:
        self.done += n
        self._maybe_log()

    def set_state(self, state: str) -> None:
        self.state = state
        self._maybe_log()

    def _maybe_log(self) -> None:
        now = self.clock()
        since = now - self.last_line
        finished = bool(self.total) and self.done >= self.total > self.logged_done
        next_step = self._step() > self.logged_step and since >= LOG_MIN_GAP_SECONDS
        if finished or next_step or since >= LOG_EVERY_SECONDS:
            self._log(now)

    def _log(self, now: float) -> None:
        elapsed = now - self.started
        parts = [self.state]
        if self.total:
            parts.append(f"{self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f} %)")
        elif self.done:
            parts.append(f"{self.done} {self.unit}")
        parts.append(f"{format_seconds(elapsed)} elapsed")
        if self.total and 0 < self.done < self.total:
            parts.append(f"~{format_seconds(elapsed / self.done * (self.total - self.done))} left")
        logger.info("%s: %s", self.description, ", ".join(p for p in parts if p))
        self.last_line, self.logged_step, self.logged_done = now, self._step(), self.done

    def close(self) -> None:
        if self.done != self.logged_done and not self.total:
            self._log(self.clock())


class _BarReporter:
    """One row of the shared rich display."""

    def __init__(self, description: str, total: int | None):
        self.description = description
        self.progress = _Display.acquire()
        self.task: TaskID = self.progress.add_task(description, total=total)
        self.progress.refresh()  # drawn at least once, however short the loop

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)

    def set_state(self, state: str) -> None:
        self.progress.update(self.task, description=f"{self.description} · {state}")

    def close(self) -> None:
        self.progress.remove_task(self.task)
        _Display.release()


class _Display:
    """The one live rich display of the process (rich allows one); loops add and remove rows."""

    _lock = threading.Lock()
    _progress: Progress | None = None
    _users = 0

    @classmethod
    def acquire(cls) -> Progress:
        with cls._lock:
            if cls._progress is None:
                cls._progress = Progress(
                    SpinnerColumn(),
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    TimeRemainingColumn(),
                    console=rich.get_console(),
                    transient=True,
                )
                cls._progress.start()
            cls._users += 1
            return cls._progress

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users == 0 and cls._progress is not None:
                cls._progress.stop()
                cls._progress = None


@contextmanager
def _reporter(description: str, total: int | None, unit: str, clock: Callable[[], float]):
    reporter = (
        _BarReporter(description, total) if on_terminal() else _LogReporter(description, total, unit, clock)
    )
    try:
        yield reporter
    finally:
        reporter.close()


def track(
    items: Iterable[T],
    description: str,
    *,
    total: int | None = None,
    size: Callable[[T], int] | None = None,
    unit: str = "items",
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[T]:
    """Yields ``items`` unchanged while showing how many have been processed.

    An item counts as processed when the loop asks for the next one.

    Args:
        items: What the loop iterates over (a list, a generator, joblib's ``return_as="generator"``...).
        description: What is being done, e.g. ``"Prophet fits"``.
        total: Work units in all; ``len(items)`` when it has one, else unknown (a count without a bar).
        size: Work units of one item (e.g. ``len`` of a chunk of series); 1 each when absent.
        unit: Name of a work unit in log lines.
        clock: Monotonic seconds (injected by tests).
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with _reporter(description, total, unit, clock) as reporter:
        for item in items:
            yield item
            reporter.advance(size(item) if size else 1)


@contextmanager
def waiting(
    description: str, *, clock: Callable[[], float] = time.monotonic
) -> Iterator[Callable[[str], None]]:
    """Shows work of unknown length (polling a job) as a spinner with its state and elapsed time.

    Yields a function to call with the current state (e.g. ``"InProgress"``) on every poll; off a terminal a
    line is logged when 30 s have passed since the last one.
    """
    with _reporter(description, None, "polls", clock) as reporter:
        yield reporter.set_state
