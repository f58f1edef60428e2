"""Injected clocks: every core that needs the time takes one, so a replayed trace runs the same way twice."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time in Unix seconds."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to: for tests and for trace replay."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time does not run backwards")
        self._now += seconds
        return self._now

    def set(self, unix_seconds: float) -> None:
        if unix_seconds < self._now:
            raise ValueError("time does not run backwards")
        self._now = unix_seconds


def utc(unix_seconds: float) -> datetime:
    return datetime.fromtimestamp(unix_seconds, UTC)
