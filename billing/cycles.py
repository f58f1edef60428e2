"""Bill cycles: the periods an account is invoiced for.  Pure: dates in, dates out.

A period runs from local midnight of its first day to local midnight of the first day of
the next period, in the account's time zone, and is returned as UTC-aware datetimes
(start inclusive, end exclusive).  Kinds:

- ``monthly`` on day N (1-31): the period starts on day N of each month; in months with
  fewer days it starts on the month's last day instead (day 31 -> 30 April, 28/29 February);
- ``weekly`` on weekday N (0 = Monday .. 6 = Sunday);
- ``daily``.
"""

from __future__ import annotations

import calendar
import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

CycleKind = Literal["monthly", "weekly", "daily"]


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime  # inclusive, UTC
    end: datetime  # exclusive, UTC

    def __contains__(self, instant: datetime) -> bool:
        return self.start <= instant < self.end


def _clamped(year: int, month: int, day: int) -> date:
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def _add_months(year: int, month: int, count: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + count
    return index // 12, index % 12 + 1


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@dataclass(frozen=True, slots=True)
class BillCycle:
    kind: CycleKind = "monthly"
    day: int = 1  # monthly: day of month 1-31; weekly: weekday 0-6; daily: unused
    time_zone: str = "UTC"

    def __post_init__(self) -> None:
        if self.kind == "monthly" and not 1 <= self.day <= 31:
            raise ValueError("a monthly cycle starts on a day from 1 to 31")
        if self.kind == "weekly" and not 0 <= self.day <= 6:
            raise ValueError("a weekly cycle starts on a weekday from 0 (Monday) to 6 (Sunday)")
        if self.kind not in ("monthly", "weekly", "daily"):
            raise ValueError(f"unknown cycle kind {self.kind!r}")
        try:
            ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.time_zone!r}") from None

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.time_zone)

    def _midnight(self, day: date) -> datetime:
        # Local midnight; zoneinfo resolves a skipped or repeated midnight to its first occurrence.
        return datetime(day.year, day.month, day.day, tzinfo=self.zone).astimezone(UTC)

    def _first_day_on_or_before(self, day: date) -> date:
        if self.kind == "daily":
            return day
        if self.kind == "weekly":
            return day - timedelta(days=(day.weekday() - self.day) % 7)
        this_month = _clamped(day.year, day.month, self.day)
        if this_month <= day:
            return this_month
        year, month = _add_months(day.year, day.month, -1)
        return _clamped(year, month, self.day)

    def _first_day_after(self, first: date) -> date:
        if self.kind == "daily":
            return first + timedelta(days=1)
        if self.kind == "weekly":
            return first + timedelta(days=7)
        year, month = _add_months(first.year, first.month, 1)
        return _clamped(year, month, self.day)

    def period_containing(self, instant: datetime) -> Period:
        if instant.tzinfo is None:
            raise ValueError("instant must carry a time zone")
        return _period_of_day(self, instant.astimezone(self.zone).date())

    def period_of_local_day(self, local_day: date) -> Period:
        """The period holding the calendar day ``local_day`` of the cycle's time zone."""
        return _period_of_day(self, local_day)

    def _period_of_day(self, local_day: date) -> Period:
        first = self._first_day_on_or_before(local_day)
        return Period(self._midnight(first), self._midnight(self._first_day_after(first)))

    def next_period(self, period: Period) -> Period:
        return self.period_containing(period.end)

    def local_day(self, instant: datetime) -> date:
        """The calendar day of ``instant`` in the cycle's time zone (usage is summed per such day)."""
        return instant.astimezone(self.zone).date()


@functools.lru_cache(maxsize=4096)
def _period_of_day(cycle: BillCycle, local_day: date) -> Period:
    # Ingestion asks for the same few days of the same few cycles all the time.
    return cycle._period_of_day(local_day)


def periods_between(cycle: BillCycle, since: datetime, until: datetime) -> list[Period]:
    """Every period that starts at or after the one holding ``since`` and ends at or before ``until``."""
    periods: list[Period] = []
    period = cycle.period_containing(since)
    while period.end <= until:
        periods.append(period)
        period = cycle.next_period(period)
    return periods
