"""capacity_forecaster.progress: log lines off a terminal (every 10 % or 30 s), rich bars on one."""

import io
import logging

import pytest
import rich
from rich.console import Console

from capacity_forecaster import progress
from capacity_forecaster.progress import format_seconds, track, waiting


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rich, "get_console", lambda: Console(file=io.StringIO(), force_terminal=False))


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    monkeypatch.setattr(rich, "get_console", lambda: console)
    return screen


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "capacity_forecaster.progress"]


def test_lines_at_tenths_when_not_on_a_terminal(no_terminal, caplog):
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="capacity_forecaster.progress"):
        seen = []
        for item in track(range(50), "Prophet fits", unit="series", clock=clock):
            seen.append(item)
            clock.now += 1.0
    lines = _lines(caplog)
    assert seen == list(range(50))
    assert lines == [  # the tenths, at most one line per 10 s, and the end
        "Prophet fits: 10/50 series (20 %), 10 s elapsed, ~40 s left",
        "Prophet fits: 20/50 series (40 %), 20 s elapsed, ~30 s left",
        "Prophet fits: 30/50 series (60 %), 30 s elapsed, ~20 s left",
        "Prophet fits: 40/50 series (80 %), 40 s elapsed, ~10 s left",
        "Prophet fits: 50/50 series (100 %), 50 s elapsed",
    ]


def test_a_line_after_30_seconds_between_tenths(no_terminal, caplog):
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="capacity_forecaster.progress"):
        for _ in track(range(1000), "Backtest prophet", unit="folds", clock=clock):
            clock.now += 0.5  # a tenth (100 items) takes 50 s: a line after 30 s, then at the tenth
            if clock.now >= 100:
                break
    assert _lines(caplog)[:3] == [
        "Backtest prophet: 60/1000 folds (6 %), 30 s elapsed, ~7 min 50 s left",
        "Backtest prophet: 100/1000 folds (10 %), 50 s elapsed, ~7 min 30 s left",
        "Backtest prophet: 160/1000 folds (16 %), 1 min 20 s elapsed, ~7 min 00 s left",
    ]


def test_sizes_count_work_units_and_unknown_totals_report_at_the_end(no_terminal, caplog):
    chunks = iter([["a", "b", "c"], ["d"], ["e", "f"]])  # a generator has no len: the total is unknown
    with caplog.at_level(logging.INFO, logger="capacity_forecaster.progress"):
        assert len(list(track(chunks, "Downloads", size=len, unit="files", clock=FakeClock()))) == 3
        assert list(track([[1, 2], [3]], "Fits", size=len, total=3, unit="series", clock=FakeClock()))
    assert _lines(caplog) == ["Downloads: 6 files, 0 s elapsed", "Fits: 3/3 series (100 %), 0 s elapsed"]


def test_waiting_logs_the_state_every_30_seconds(no_terminal, caplog):
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="capacity_forecaster.progress"):
        with waiting("SageMaker job cf-1", clock=clock) as update:
            for status in ("InProgress", "InProgress", "InProgress", "Completed"):
                update(status)
                clock.now += 20.0
    assert _lines(caplog) == ["SageMaker job cf-1: InProgress, 40 s elapsed"]


def test_empty_loops_stay_silent(no_terminal, caplog):
    with caplog.at_level(logging.INFO, logger="capacity_forecaster.progress"):
        assert list(track([], "Nothing")) == []
    assert _lines(caplog) == []


def test_nested_loops_on_a_terminal_draw_bars_in_one_display(terminal, caplog):
    with caplog.at_level(logging.INFO, logger="capacity_forecaster.progress"):
        for _ in track(range(2), "Backtest prophet"):
            for _ in track(range(3), "Prophet fits"):
                pass
        with waiting("SageMaker job cf-2") as update:
            update("InProgress")
    drawn = terminal.getvalue()
    assert "Backtest prophet" in drawn and "Prophet fits" in drawn and "━" in drawn
    assert _lines(caplog) == []  # a terminal gets bars, not log lines
    assert progress._Display._progress is None  # the display is stopped once the outer loop ends


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0 s"), (59.6, "1 min 00 s"), (185, "3 min 05 s"), (3720, "1 h 02 min")]
)
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text
