"""Rerating a period after a tariff correction: the difference first, then booked when applied.

Real parts: SQLite and PostgreSQL (the ``database`` fixture).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import select

from billing import models
from billing.catalog import add_subscriber, set_tariff
from billing.invoicing import invoice_document, run_cycles
from billing.rating import ServiceTariff
from billing.rerate import apply_rerate, plan_rerate
from tests.billing.conftest import Books
from tests.billing.factories import make_cdr, voice_plan

JAN = datetime(2026, 1, 1, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)
MAR = datetime(2026, 3, 1, tzinfo=UTC)


def _correct_voice_price(books: Books, price: int, effective_from: datetime = JAN) -> None:
    corrected = voice_plan(
        peak=False,
        time_zone="UTC",
        services=[
            ServiceTariff(
                service="voice",
                methods=["INVITE"],
                increment_seconds=60,
                prices={"offpeak": Decimal(price)},
                setup_minor=5,
            )
        ],
    )
    with books.engine.begin() as conn:
        set_tariff(conn, "standard", corrected, effective_from=effective_from, now=MAR, note="price correction")


def _lines(books: Books) -> dict[tuple[datetime, str], int]:
    with books.engine.connect() as conn:
        rows = conn.execute(
            select(
                models.invoices.c.period_start, models.invoice_lines.c.service, models.invoice_lines.c.amount_minor
            ).join(models.invoices, models.invoices.c.id == models.invoice_lines.c.invoice_id)
        ).all()
    return {(r.period_start, r.service): r.amount_minor for r in rows}


def test_rerate_shows_the_difference_and_changes_nothing_until_applied(books: Books) -> None:
    books.store([make_cdr(start=datetime(2026, 2, 3, 10, tzinfo=UTC), duration=120) for _ in range(3)])
    _correct_voice_price(books, 8)
    before = _lines(books)
    with books.engine.connect() as conn:
        report = plan_rerate(conn, FEB, MAR)
    assert (report.cdr_count, len(report.changes)) == (3, 3)
    assert report.difference_minor == 3 * 2 * (8 - 6)
    assert report.by_account() == {books.account.id: (3 * 17, 3 * 21)}
    assert _lines(books) == before

    with books.engine.begin() as conn:
        applied = apply_rerate(conn, FEB, MAR, now=MAR)
    assert applied.difference_minor == report.difference_minor
    assert _lines(books) == {(FEB, "voice"): 3 * 21}
    assert books.total(models.usage_daily.c.amount_minor) == 3 * 21
    assert books.total(models.charges.c.amount_minor, models.charges.c.component == "usage") == 3 * 16
    with books.engine.connect() as conn:
        assert plan_rerate(conn, FEB, MAR).changes == []  # applied: nothing left to change


def test_rerate_only_touches_cdrs_of_the_period(books: Books) -> None:
    books.store(
        [
            make_cdr(start=datetime(2026, 1, 10, tzinfo=UTC), duration=60),
            make_cdr(start=datetime(2026, 2, 10, tzinfo=UTC), duration=60),
        ]
    )
    _correct_voice_price(books, 9)
    with books.engine.begin() as conn:
        report = apply_rerate(conn, FEB, MAR, now=MAR)
    assert report.cdr_count == 1
    assert _lines(books) == {(JAN, "voice"): 11, (FEB, "voice"): 14}


def test_rerate_of_a_closed_period_corrects_on_the_next_open_invoice(books: Books) -> None:
    books.store([make_cdr(start=datetime(2026, 1, 10, tzinfo=UTC), duration=60)])
    with books.engine.begin() as conn:
        (january,) = run_cycles(conn, now=FEB, prefix="INV-")
    _correct_voice_price(books, 9)
    with books.engine.begin() as conn:
        apply_rerate(conn, JAN, FEB, now=FEB)
    with books.engine.connect() as conn:
        assert invoice_document(conn, january["id"]) == january  # closed: untouched
    assert _lines(books) == {(JAN, "voice"): 11, (FEB, "voice"): 14 - 11}


def test_rerate_charges_cdrs_stored_before_their_subscriber_was_known(books: Books) -> None:
    outcome = books.store(
        [make_cdr(served_party="sip:carol@home.net", start=datetime(2026, 2, 5, tzinfo=UTC), duration=60)]
    )
    assert outcome.unassigned == 1
    with books.engine.begin() as conn:
        add_subscriber(conn, books.account.id, "sip:carol@home.net", now=FEB)
        report = apply_rerate(conn, FEB, MAR, now=MAR)
    assert [(c.old_account_id, c.new_account_id, c.new_minor) for c in report.changes] == [(None, books.account.id, 11)]
    assert _lines(books) == {(FEB, "voice"): 11}
    with books.engine.connect() as conn:
        assert conn.execute(select(models.cdrs.c.account_id)).scalar_one() == books.account.id


def test_a_correction_effective_later_leaves_earlier_cdrs_alone(books: Books) -> None:
    books.store([make_cdr(start=datetime(2026, 2, 5, tzinfo=UTC), duration=60)])
    _correct_voice_price(books, 9, effective_from=datetime(2026, 2, 15, tzinfo=UTC))
    with books.engine.connect() as conn:
        assert plan_rerate(conn, FEB, MAR).changes == []
