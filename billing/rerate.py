"""Rerating: rate the stored CDRs of a period again with the tariffs (and subscribers) as they are now.

``plan_rerate`` only reads and reports the difference, CDR by CDR and per account;
``apply_rerate`` does the same inside a write transaction and books the difference: the
old charges of each changed CDR are taken back from its usage and invoice line and the
new ones booked.  A CDR whose invoice is closed already is corrected on the account's
next open invoice (a closed invoice never changes).  CDRs stored without an account
are picked up when a subscriber identity now matches them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select, update

from billing import models
from billing.catalog import PlanBook, get_account
from billing.ingest import Assessment, Booking, Ledger, assess, books_for, charge_rows, owner_of
from billing.invoicing import OpenInvoices
from billing.models import INVOICE_OPEN
from charging.cdr import Cdr

_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class CdrChange:
    cdr_row_id: int
    cdr_id: str
    old_account_id: int | None
    new_account_id: int | None
    old_service: str | None
    new_service: str | None
    old_minor: int
    new_minor: int
    old_charges: tuple[tuple[str, int, str | None], ...]
    new_charges: tuple[tuple[str, int, str | None], ...]

    @property
    def difference_minor(self) -> int:
        return self.new_minor - self.old_minor


@dataclass(slots=True)
class RerateReport:
    period_from: datetime
    period_to: datetime
    cdr_count: int = 0
    changes: list[CdrChange] = field(default_factory=list)
    applied: bool = False

    @property
    def difference_minor(self) -> int:
        return sum(change.difference_minor for change in self.changes)

    def by_account(self) -> dict[int | None, tuple[int, int]]:
        """Account -> (subscriber charges before, after) over the changed CDRs."""
        sums: dict[int | None, list[int]] = defaultdict(lambda: [0, 0])
        for change in self.changes:
            sums[change.old_account_id][0] += change.old_minor
            sums[change.new_account_id][1] += change.new_minor
        return {account: (old, new) for account, (old, new) in sums.items()}

    def as_json(self) -> dict[str, Any]:
        return {
            "period_from": self.period_from.isoformat(),
            "period_to": self.period_to.isoformat(),
            "cdr_count": self.cdr_count,
            "changed_count": len(self.changes),
            "difference_minor": self.difference_minor,
            "applied": self.applied,
            "by_account": [
                {"account_id": account, "before_minor": old, "after_minor": new, "difference_minor": new - old}
                for account, (old, new) in sorted(self.by_account().items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
            ],
            "changes": [
                {
                    "cdr_id": c.cdr_id,
                    "old_account_id": c.old_account_id,
                    "new_account_id": c.new_account_id,
                    "old_service": c.old_service,
                    "new_service": c.new_service,
                    "old_minor": c.old_minor,
                    "new_minor": c.new_minor,
                }
                for c in self.changes
            ],
        }


def _charge_key(component: str, amount: int, partner: str | None) -> tuple[str, int, str | None]:
    return (component, amount, partner)


def _walk(conn: Connection, period_from: datetime, period_to: datetime, plan_book: PlanBook) -> Any:
    """Yield (row, cdr, assessment, old charges) for every stored CDR that started in the period."""
    table = models.cdrs
    last_id = 0
    while True:
        rows = conn.execute(
            select(table)
            .where(table.c.started_at >= period_from, table.c.started_at < period_to, table.c.id > last_id)
            .order_by(table.c.id)
            .limit(_CHUNK)
        ).all()
        if not rows:
            return
        last_id = rows[-1].id
        cdrs = [Cdr.model_validate_json(row.payload) for row in rows]
        owners, accounts, plans = books_for(conn, plan_book, cdrs)
        old: dict[int, list[tuple[str, int, str | None]]] = defaultdict(list)
        charge_table = models.charges
        for charge in conn.execute(
            select(
                charge_table.c.cdr_row_id,
                charge_table.c.component,
                charge_table.c.amount_minor,
                charge_table.c.partner_ioi,
            ).where(charge_table.c.cdr_row_id.in_([row.id for row in rows]))
        ):
            old[charge.cdr_row_id].append(_charge_key(charge.component, charge.amount_minor, charge.partner_ioi))
        for row, cdr in zip(rows, cdrs, strict=True):
            yield row, cdr, assess(cdr, owner_of(cdr, owners), accounts, plans), tuple(sorted(old[row.id]))


def _change(row: Any, judged: Assessment, old_charges: tuple[tuple[str, int, str | None], ...]) -> CdrChange | None:
    booked = judged.booked and judged.rating is not None and judged.account is not None
    new_charges: tuple[tuple[str, int, str | None], ...] = ()
    new_minor = 0
    new_service = None
    if booked:
        assert judged.rating is not None
        new_charges = tuple(
            sorted(_charge_key(c.component.value, c.amount_minor, c.partner_ioi) for c in judged.rating.charges)
        )
        new_minor = judged.rating.subscriber_minor
        new_service = judged.rating.service
    new_account = judged.account.id if judged.account is not None else None
    if (row.account_id, row.service, old_charges) == (new_account, new_service, new_charges):
        return None
    return CdrChange(
        row.id,
        row.cdr_id,
        row.account_id,
        new_account,
        row.service,
        new_service,
        row.amount_minor,
        new_minor,
        old_charges,
        new_charges,
    )


def plan_rerate(
    conn: Connection, period_from: datetime, period_to: datetime, plan_book: PlanBook | None = None
) -> RerateReport:
    """What rerating the period would change; writes nothing."""
    if period_to <= period_from:
        raise ValueError("the period's end must be after its start")
    report = RerateReport(period_from, period_to)
    for row, _cdr, judged, old_charges in _walk(conn, period_from, period_to, plan_book or PlanBook()):
        report.cdr_count += 1
        change = _change(row, judged, old_charges)
        if change is not None:
            report.changes.append(change)
    return report


def apply_rerate(
    conn: Connection, period_from: datetime, period_to: datetime, *, now: datetime, plan_book: PlanBook | None = None
) -> RerateReport:
    """Rerate the period and book the difference, in the caller's transaction."""
    if period_to <= period_from:
        raise ValueError("the period's end must be after its start")
    report = RerateReport(period_from, period_to, applied=True)
    ledger = Ledger(OpenInvoices(now))
    cdr_table, charge_table = models.cdrs, models.charges
    accounts_seen: dict[int, Any] = {}
    for row, _cdr, judged, old_charges in list(_walk(conn, period_from, period_to, plan_book or PlanBook())):
        report.cdr_count += 1
        change = _change(row, judged, old_charges)
        if change is None:
            continue
        report.changes.append(change)
        if row.account_id is not None and row.service is not None:
            old_account = accounts_seen.get(row.account_id)
            if old_account is None:
                old_account = accounts_seen[row.account_id] = get_account(conn, row.account_id)
            ledger.book(
                conn,
                Booking(old_account, row.started_at, row.service, row.duration_seconds, row.octets, row.amount_minor),
                sign=-1,
                invoice_id=_still_open(conn, row.invoice_id),
            )
        conn.execute(delete(charge_table).where(charge_table.c.cdr_row_id == row.id))
        values: dict[str, Any] = {
            "account_id": change.new_account_id,
            "service": change.new_service,
            "amount_minor": change.new_minor,
            "invoice_id": None,
        }
        if judged.booked:
            assert judged.account is not None and judged.rating is not None and judged.version is not None
            booking = Booking(
                judged.account,
                row.started_at,
                judged.rating.service,
                row.duration_seconds,
                row.octets,
                change.new_minor,
            )
            invoice_id = ledger.book(conn, booking)
            values["invoice_id"] = invoice_id
            rows = charge_rows(judged.rating, judged.version, judged.account, row.id, invoice_id, row.started_at)
            if rows:
                conn.execute(charge_table.insert(), rows)
        conn.execute(update(cdr_table).where(cdr_table.c.id == row.id).values(**values))
    ledger.flush(conn)
    conn.execute(
        models.rerate_runs.insert().values(
            period_from=period_from,
            period_to=period_to,
            cdr_count=report.cdr_count,
            changed_count=len(report.changes),
            difference_minor=report.difference_minor,
            applied_at=now,
        )
    )
    return report


def _still_open(conn: Connection, invoice_id: int | None) -> int | None:
    """The invoice a CDR was booked on if it is still open, else None (book on the next open one)."""
    if invoice_id is None:
        return None
    status = conn.execute(
        select(models.invoices.c.status).where(models.invoices.c.id == invoice_id)
    ).scalar_one_or_none()
    return invoice_id if status == INVOICE_OPEN else None
