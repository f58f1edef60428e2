"""Invoices: one per account and bill period, open while the period runs, closed (and then never
written again) by the cycle run once the period has ended.

- Ingestion adds each rated CDR to the open invoice of the period it started in, as a
  line per service.  A CDR that arrives after its period's invoice was closed lands on
  the next open invoice of that account (a closed invoice is final).
- Closing sums the lines, applies the account's taxes (each tax = subtotal x basis
  points / 10 000, rounded half away from zero to whole minor units), draws the next
  invoice number from a counter that only grows, and marks the invoice closed, all in
  one transaction: the counter moves only with a close that commits, so numbers have no
  gaps, and a unique constraint refuses any number twice.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Connection, select

from billing import models
from billing.catalog import Account, account_from_row
from billing.cycles import Period, periods_between
from billing.models import INVOICE_CLOSED, INVOICE_OPEN
from billing.settings import TaxSetting
from billing.sql import _insert, insert_ignoring_duplicates


class InvoiceError(ValueError):
    """An invoice operation refused; the message says why."""


def tax_amounts(subtotal_minor: int, taxes: tuple[TaxSetting, ...] | list[TaxSetting]) -> list[dict[str, Any]]:
    """Each tax on the subtotal, rounded half away from zero to whole minor units."""
    out = []
    for tax in taxes:
        exact = Decimal(subtotal_minor) * Decimal(tax.basis_points) / Decimal(10_000)
        amount = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
        out.append({"name": tax.name, "basis_points": tax.basis_points, "amount_minor": amount})
    return out


def _lock(conn: Connection, statement: Any, shared: bool = False) -> Any:
    # PostgreSQL: consumers take a shared row lock on the invoices they book on and the cycle run an
    # exclusive one to close, so closing waits for bookings in flight (and they for it) while
    # consumers do not wait for each other.  SQLite: BEGIN IMMEDIATE serialises writers already.
    if conn.dialect.name != "postgresql":
        return statement
    return statement.with_for_update(read=shared)


@dataclass(slots=True)
class OpenInvoices:
    """Finds (or opens) the invoice a charge goes on, within one transaction."""

    now: datetime
    _by_period: dict[tuple[int, datetime], int] = field(default_factory=dict)

    def invoice_for(self, conn: Connection, account: Account, instant: datetime) -> int:
        return self.invoices_for(conn, [(account, instant)])[0]

    def invoices_for(self, conn: Connection, wanted: list[tuple[Account, datetime]]) -> list[int]:
        """The open invoice for each (account, instant), with a few statements for the whole list."""
        return self.invoices_for_periods(
            conn, [(account, account.cycle.period_containing(instant)) for account, instant in wanted]
        )

    def invoices_for_periods(self, conn: Connection, wanted: list[tuple[Account, Period]]) -> list[int]:
        """The open invoice for each (account, period its CDR started in): that period's, or the next
        open one when it is closed; with a few statements for the whole list."""
        periods = [period for _, period in wanted]
        accounts = {account.id: account for account, _ in wanted}
        while True:
            missing = {
                (account.id, period.start): period
                for (account, _), period in zip(wanted, periods, strict=True)
                if (account.id, period.start) not in self._by_period
            }
            if not missing:
                return [self._by_period[(a.id, p.start)] for (a, _), p in zip(wanted, periods, strict=True)]
            found = self._lookup(conn, missing)
            absent = [key for key in missing if key not in found]
            if absent:
                self._open(conn, [(accounts[key[0]], missing[key]) for key in absent])
                found = self._lookup(conn, missing)
            closed = {key for key, (_, status) in found.items() if status != INVOICE_OPEN}
            for key, (invoice_id, status) in found.items():
                if status == INVOICE_OPEN:
                    self._by_period[key] = invoice_id
            # A closed period's charges go on the account's next period (a closed invoice is final).
            periods = [
                accounts[account.id].cycle.next_period(period) if (account.id, period.start) in closed else period
                for (account, _), period in zip(wanted, periods, strict=True)
            ]

    def _lookup(
        self, conn: Connection, keys: dict[tuple[int, datetime], Period]
    ) -> dict[tuple[int, datetime], tuple[int, str]]:
        table = models.invoices
        query = _lock(
            conn,
            select(table.c.id, table.c.account_id, table.c.period_start, table.c.status)
            .where(
                table.c.account_id.in_(sorted({account_id for account_id, _ in keys})),
                table.c.period_start.in_(sorted({start for _, start in keys})),
            )
            .order_by(table.c.id),
            shared=True,
        )
        return {
            (row.account_id, row.period_start): (int(row.id), row.status)
            for row in conn.execute(query)
            if (row.account_id, row.period_start) in keys
        }

    def _open(self, conn: Connection, wanted: list[tuple[Account, Period]]) -> None:
        table = models.invoices
        rows = [
            {
                "account_id": account.id,
                "period_start": period.start,
                "period_end": period.end,
                "status": INVOICE_OPEN,
                "currency": account.currency,
                "subtotal_minor": 0,
                "tax_minor": 0,
                "total_minor": 0,
                "taxes": [],
                "created_at": self.now,
            }
            for account, period in sorted(wanted, key=lambda item: (item[0].id, item[1].start))
        ]
        conn.execute(insert_ignoring_duplicates(conn, table, ["account_id", "period_start"]), rows)

    def _find_or_open(self, conn: Connection, account: Account, period: Period) -> Any:
        table = models.invoices
        query = _lock(
            conn,
            select(table.c.id, table.c.status).where(
                table.c.account_id == account.id, table.c.period_start == period.start
            ),
        )
        row = conn.execute(query).first()
        if row is None:
            conn.execute(
                insert_ignoring_duplicates(conn, table, ["account_id", "period_start"]).values(
                    account_id=account.id,
                    period_start=period.start,
                    period_end=period.end,
                    status=INVOICE_OPEN,
                    currency=account.currency,
                    subtotal_minor=0,
                    tax_minor=0,
                    total_minor=0,
                    taxes=[],
                    created_at=self.now,
                )
            )
            row = conn.execute(query).one()
        return row


def next_invoice_number(conn: Connection, prefix: str) -> str:
    table = models.invoice_sequence
    statement = _insert(conn, table).values(series=prefix, last_number=1)
    statement = statement.on_conflict_do_update(
        index_elements=["series"], set_={"last_number": table.c.last_number + 1}
    ).returning(table.c.last_number)
    number = conn.execute(statement).scalar_one()
    return f"{prefix}{number:08d}"


def close_invoice(conn: Connection, invoice_id: int, *, now: datetime, prefix: str) -> dict[str, Any]:
    table = models.invoices
    row = conn.execute(_lock(conn, select(table).where(table.c.id == invoice_id))).first()
    if row is None:
        raise InvoiceError(f"no invoice {invoice_id}")
    if row.status != INVOICE_OPEN:
        raise InvoiceError(f"invoice {row.number} is closed")
    account_row = conn.execute(select(models.accounts).where(models.accounts.c.id == row.account_id)).one()
    account = account_from_row(account_row)
    lines = models.invoice_lines
    subtotal = sum(
        amount for (amount,) in conn.execute(select(lines.c.amount_minor).where(lines.c.invoice_id == invoice_id))
    )
    taxes = tax_amounts(subtotal, account.taxes)
    tax_total = sum(tax["amount_minor"] for tax in taxes)
    number = next_invoice_number(conn, prefix)
    updated = conn.execute(
        table.update()
        .where(table.c.id == invoice_id, table.c.status == INVOICE_OPEN)
        .values(
            status=INVOICE_CLOSED,
            number=number,
            subtotal_minor=subtotal,
            tax_minor=tax_total,
            total_minor=subtotal + tax_total,
            taxes=taxes,
            closed_at=now,
        )
    )
    if updated.rowcount != 1:
        raise InvoiceError(f"invoice {invoice_id} was closed meanwhile")
    return invoice_document(conn, invoice_id)


def run_cycles(conn: Connection, *, now: datetime, prefix: str, account_id: int | None = None) -> list[dict[str, Any]]:
    """Close every invoice whose period has ended by ``now`` (creating empty ones for periods
    without usage, so every ended period gets its invoice).  Returns the closed invoices."""
    closed: list[dict[str, Any]] = []
    query = select(models.accounts).order_by(models.accounts.c.id)
    if account_id is not None:
        query = query.where(models.accounts.c.id == account_id)
    opener = OpenInvoices(now)
    for account_row in conn.execute(query).all():
        account = account_from_row(account_row)
        table = models.invoices
        last_closed_end = conn.execute(
            select(table.c.period_end)
            .where(table.c.account_id == account.id, table.c.status == INVOICE_CLOSED)
            .order_by(table.c.period_end.desc())
            .limit(1)
        ).scalar_one_or_none()
        oldest_open = conn.execute(
            select(table.c.period_start)
            .where(table.c.account_id == account.id, table.c.status == INVOICE_OPEN)
            .order_by(table.c.period_start)
            .limit(1)
        ).scalar_one_or_none()
        # From the first period not closed yet (or the account's first), and from any open invoice
        # older than that (CDRs may predate the account).
        since = last_closed_end if last_closed_end is not None else account.created_at
        if oldest_open is not None:
            since = min(since, oldest_open)
        for period in periods_between(account.cycle, since, now):
            row = opener._find_or_open(conn, account, period)
            if row.status == INVOICE_OPEN:
                closed.append(close_invoice(conn, row.id, now=now, prefix=prefix))
    return closed


def invoice_document(conn: Connection, invoice_id: int) -> dict[str, Any]:
    table = models.invoices
    row = conn.execute(
        select(table, models.accounts.c.name.label("account_name"))
        .join(models.accounts, models.accounts.c.id == table.c.account_id)
        .where(table.c.id == invoice_id)
    ).first()
    if row is None:
        raise InvoiceError(f"no invoice {invoice_id}")
    lines = models.invoice_lines
    line_rows = conn.execute(select(lines).where(lines.c.invoice_id == invoice_id).order_by(lines.c.service))
    line_list = [
        {
            "service": line.service,
            "cdr_count": line.cdr_count,
            "duration_seconds": round(line.duration_seconds, 3),
            "octets": line.octets,
            "amount_minor": line.amount_minor,
        }
        for line in line_rows
    ]
    subtotal = row.subtotal_minor if row.status == INVOICE_CLOSED else sum(x["amount_minor"] for x in line_list)
    return {
        "id": row.id,
        "number": row.number,
        "account_id": row.account_id,
        "account_name": row.account_name,
        "status": row.status,
        "period_start": row.period_start.isoformat(),
        "period_end": row.period_end.isoformat(),
        "currency": row.currency,
        "lines": line_list,
        "subtotal_minor": subtotal,
        "taxes": row.taxes,
        "tax_minor": row.tax_minor,
        "total_minor": row.total_minor if row.status == INVOICE_CLOSED else subtotal,
        "created_at": row.created_at.isoformat(),
        "closed_at": row.closed_at.isoformat() if row.closed_at else None,
    }


def export_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


CSV_COLUMNS = (
    "invoice",
    "account",
    "period_start",
    "period_end",
    "kind",
    "item",
    "cdr_count",
    "duration_seconds",
    "octets",
    "amount_minor",
    "currency",
)


def export_csv(document: dict[str, Any]) -> str:
    """One row per line and per tax, then subtotal and total: the shape a spreadsheet or ERP import takes."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    number = document["number"] or f"open-{document['id']}"
    head = [number, document["account_name"], document["period_start"], document["period_end"]]
    currency = document["currency"]
    for line in document["lines"]:
        usage = [line["cdr_count"], line["duration_seconds"], line["octets"]]
        writer.writerow([*head, "line", line["service"], *usage, line["amount_minor"], currency])
    writer.writerow([*head, "subtotal", "", "", "", "", document["subtotal_minor"], currency])
    for tax in document["taxes"]:
        item = f"{tax['name']} {tax['basis_points'] / 100:g}%"
        writer.writerow([*head, "tax", item, "", "", "", tax["amount_minor"], currency])
    writer.writerow([*head, "total", "", "", "", "", document["total_minor"], currency])
    return out.getvalue()
