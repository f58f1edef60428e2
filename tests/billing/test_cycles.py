"""Bill-cycle arithmetic (pure): monthly on day N clamped to month end, weekly, daily, time zones."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from billing.cycles import BillCycle, Period, periods_between


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_monthly_cycle_on_day_15_runs_from_the_15th_to_the_15th() -> None:
    period = BillCycle("monthly", 15).period_containing(_utc(2026, 3, 20, 12))
    assert period == Period(_utc(2026, 3, 15), _utc(2026, 4, 15))
    before = BillCycle("monthly", 15).period_containing(_utc(2026, 3, 14, 23, 59, 59))
    assert before == Period(_utc(2026, 2, 15), _utc(2026, 3, 15))


def test_monthly_cycle_on_day_31_is_clamped_to_the_end_of_short_months() -> None:
    cycle = BillCycle("monthly", 31)
    assert cycle.period_containing(_utc(2026, 2, 10)) == Period(_utc(2026, 1, 31), _utc(2026, 2, 28))
    assert cycle.period_containing(_utc(2026, 3, 1)) == Period(_utc(2026, 2, 28), _utc(2026, 3, 31))
    assert cycle.period_containing(_utc(2026, 4, 30)) == Period(_utc(2026, 4, 30), _utc(2026, 5, 31))
    leap = cycle.period_containing(_utc(2028, 2, 29, 8))
    assert leap == Period(_utc(2028, 2, 29), _utc(2028, 3, 31))


def test_period_boundary_belongs_to_the_new_period() -> None:
    cycle = BillCycle("monthly", 1)
    boundary = _utc(2026, 4, 1)
    assert boundary not in cycle.period_containing(_utc(2026, 3, 31, 23, 59, 59))
    assert cycle.period_containing(boundary).start == boundary


def test_cycle_boundaries_are_local_midnight_in_the_accounts_time_zone() -> None:
    cycle = BillCycle("monthly", 1, "Europe/Berlin")
    # 23:30 UTC on 31 March is already 1 April in Berlin (summer time, UTC+2).
    period = cycle.period_containing(_utc(2026, 3, 31, 23, 30))
    assert period == Period(_utc(2026, 3, 31, 22), _utc(2026, 4, 30, 22))
    # A period spanning the change to summer time is an hour shorter.
    march = cycle.period_containing(_utc(2026, 3, 15))
    assert march == Period(_utc(2026, 2, 28, 23), _utc(2026, 3, 31, 22))


def test_weekly_cycle_starts_on_the_chosen_weekday() -> None:
    cycle = BillCycle("weekly", 0)  # Mondays
    assert cycle.period_containing(_utc(2026, 3, 12, 15)) == Period(_utc(2026, 3, 9), _utc(2026, 3, 16))
    assert cycle.period_containing(_utc(2026, 3, 16)) == Period(_utc(2026, 3, 16), _utc(2026, 3, 23))


def test_daily_cycle_and_the_periods_that_have_ended() -> None:
    cycle = BillCycle("daily")
    ended = periods_between(cycle, _utc(2026, 3, 1, 10), _utc(2026, 3, 4, 6))
    assert [p.start.day for p in ended] == [1, 2, 3]
    assert cycle.next_period(ended[-1]).start == _utc(2026, 3, 4)


def test_invalid_cycles_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="day from 1 to 31"):
        BillCycle("monthly", 0)
    with pytest.raises(ValueError, match="weekday"):
        BillCycle("weekly", 7)
    with pytest.raises(ValueError, match="time zone"):
        BillCycle("daily", 1, "Nowhere/Land")
