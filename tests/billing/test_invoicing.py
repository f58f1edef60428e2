"""Bill cycles and invoices over a real database: closing, taxes, numbering, immutability, late CDRs, exports.

Real parts: SQLite and PostgreSQL (the ``database`` fixture).
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from billing import models
from billing.catalog import AccountSpec, create_account
from billing.invoicing import (
    InvoiceError,
    close_invoice,
    export_csv,
    export_json,
    invoice_document,
    run_cycles,
    tax_amounts,
)
from billing.settings import TaxSetting
from tests.billing.conftest import Books
from tests.billing.factories import make_cdr

PREFIX = "INV-"


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def _invoices(books: Books) -> list:  # type: ignore[type-arg]
    with books.engine.connect() as conn:
        return list(conn.execute(select(models.invoices).order_by(models.invoices.c.period_start)).all())


def test_cycle_run_closes_ended_periods_with_taxes_and_leaves_the_running_one_open(books: Books) -> None:
    books.store([make_cdr(start=_utc(2026, 1, 20, 21), duration=61), make_cdr(start=_utc(2026, 2, 3, 21), duration=30)])
    with books.engine.begin() as conn:
        closed = run_cycles(conn, now=_utc(2026, 2, 10), prefix=PREFIX)
    assert [c["period_start"] for c in closed] == ["2026-01-01T00:00:00+00:00"]
    january = closed[0]
    assert january["lines"] == [
        {"service": "voice", "cdr_count": 1, "duration_seconds": 61.0, "octets": 0, "amount_minor": 17}
    ]
    assert january["taxes"] == [{"name": "VAT", "basis_points": 1900, "amount_minor": 3}]  # 3.23 -> 3
    assert (january["subtotal_minor"], january["tax_minor"], january["total_minor"]) == (17, 3, 20)
    assert january["number"] == "INV-00000001"
    assert [(i.status, i.number) for i in _invoices(books)] == [("closed", "INV-00000001"), ("open", None)]


def test_periods_without_usage_still_get_an_invoice_and_numbers_never_repeat(books: Books) -> None:
    with books.engine.begin() as conn:
        first = run_cycles(conn, now=_utc(2026, 4, 1), prefix=PREFIX)
        again = run_cycles(conn, now=_utc(2026, 4, 1), prefix=PREFIX)
    assert [c["period_start"][:7] for c in first] == ["2026-01", "2026-02", "2026-03"]
    assert again == []
    with books.engine.begin() as conn:
        later = run_cycles(conn, now=_utc(2026, 5, 2), prefix=PREFIX)
    numbers = [c["number"] for c in first + later]
    assert numbers == ["INV-00000001", "INV-00000002", "INV-00000003", "INV-00000004"]
    assert all(c["total_minor"] == 0 for c in first)


def test_invoice_numbers_are_one_sequence_across_accounts(books: Books) -> None:
    books.store([make_cdr(start=_utc(2026, 1, 5, 21))])
    with books.engine.begin() as conn:
        run_cycles(conn, now=_utc(2026, 2, 1), prefix=PREFIX)
    with books.engine.begin() as conn:
        create_account(
            conn,
            AccountSpec(name="bob", cycle_kind="daily"),
            now=_utc(2026, 1, 1),
            default_currency="EUR",
            default_time_zone="UTC",
            default_taxes=[],
        )
        closed = run_cycles(conn, now=_utc(2026, 1, 3), prefix=PREFIX)
    assert [c["number"] for c in closed] == ["INV-00000002", "INV-00000003"]


def test_a_closed_invoice_is_immutable_and_a_late_cdr_lands_on_the_next_open_invoice(books: Books) -> None:
    books.store([make_cdr(start=_utc(2026, 1, 20, 21), duration=60)])
    with books.engine.begin() as conn:
        (january,) = run_cycles(conn, now=_utc(2026, 2, 1), prefix=PREFIX)
    books.store([make_cdr(start=_utc(2026, 1, 31, 23), duration=60)])  # arrives after January was closed
    with books.engine.connect() as conn:
        assert invoice_document(conn, january["id"]) == january
    with books.engine.begin() as conn, pytest.raises(InvoiceError, match="closed"):
        close_invoice(conn, january["id"], now=_utc(2026, 2, 2), prefix=PREFIX)
    (_, february) = _invoices(books)
    assert february.status == "open" and february.period_start == _utc(2026, 2, 1)
    with books.engine.connect() as conn:
        assert invoice_document(conn, february.id)["lines"][0]["amount_minor"] == 11


def test_tax_amounts_round_half_away_from_zero_per_tax() -> None:
    taxes = [TaxSetting(name="VAT", basis_points=1900), TaxSetting(name="levy", basis_points=250)]
    assert tax_amounts(150, taxes) == [
        {"name": "VAT", "basis_points": 1900, "amount_minor": 29},  # 28.5 -> 29
        {"name": "levy", "basis_points": 250, "amount_minor": 4},  # 3.75 -> 4
    ]
    assert tax_amounts(-150, taxes[:1])[0]["amount_minor"] == -29


def test_invoice_exports_as_json_and_csv_with_lines_taxes_and_total(books: Books) -> None:
    books.store(
        [
            make_cdr(start=_utc(2026, 1, 20, 21), duration=61),
            make_cdr(start=_utc(2026, 1, 21, 21), method="MESSAGE", duration=0),
        ]
    )
    with books.engine.begin() as conn:
        (january,) = run_cycles(conn, now=_utc(2026, 2, 1), prefix=PREFIX)
    assert json.loads(export_json(january)) == january
    rows = list(csv.DictReader(io.StringIO(export_csv(january))))
    assert [(r["kind"], r["item"], r["amount_minor"]) for r in rows] == [
        ("line", "messaging", "9"),
        ("line", "voice", "17"),
        ("subtotal", "", "26"),
        ("tax", "VAT 19%", "5"),
        ("total", "", "31"),
    ]
    assert {r["invoice"] for r in rows} == {"INV-00000001"}


def test_the_database_itself_refuses_to_change_a_closed_invoice_or_its_lines(books: Books) -> None:
    books.store([make_cdr(start=_utc(2026, 1, 20, 21), duration=60), make_cdr(start=_utc(2026, 2, 2, 21))])
    with books.engine.begin() as conn:
        (january,) = run_cycles(conn, now=_utc(2026, 2, 1), prefix=PREFIX)
    invoices, lines = models.invoices, models.invoice_lines
    attempts = [
        invoices.update().where(invoices.c.id == january["id"]).values(total_minor=0),
        invoices.delete().where(invoices.c.id == january["id"]),
        lines.update().where(lines.c.invoice_id == january["id"]).values(amount_minor=0),
        lines.delete().where(lines.c.invoice_id == january["id"]),
        lines.insert().values(
            invoice_id=january["id"], service="extra", cdr_count=1, duration_seconds=0.0, octets=0, amount_minor=1
        ),
    ]
    for statement in attempts:
        with pytest.raises(DBAPIError, match="closed invoice is immutable"), books.engine.begin() as conn:
            conn.execute(statement)
    with books.engine.connect() as conn:
        assert invoice_document(conn, january["id"]) == january
    (_, february) = _invoices(books)
    with books.engine.begin() as conn:  # an open invoice stays writable
        conn.execute(invoices.update().where(invoices.c.id == february.id).values(currency="EUR"))
