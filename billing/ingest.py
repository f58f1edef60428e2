"""Storing a batch of CDRs: one transaction that stores, rates and books them.

``store_batch`` is what the Kafka consumer runs per poll, and it is idempotent: CDRs are
inserted with ON CONFLICT (cdr_id) DO NOTHING and only the rows this transaction really
inserted are rated and booked, so a batch delivered again (after a crash between the
database commit and the offset commit, or after a rebalance) changes nothing.

Booking a CDR means: its charges (per component), the account's usage of that local
day and service, and the line of its service on the open invoice of its bill period.
``Ledger`` gathers those additions and writes them in key order at the end.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, select

from billing import models
from billing.catalog import Account, PlanBook, PlanIndex, PlanVersion, accounts_by_id, normalize_identity, owners_of
from billing.invoicing import OpenInvoices
from billing.rating import SUBSCRIBER_COMPONENTS, ImpossibleCdr, Rating, Usage, measure, rate, rated_at
from billing.sql import add_to_counters, bulk_insert, insert_ignoring_duplicates
from charging.cdr import SUPPORTED_VERSIONS, Cdr, schema_version_of

log = logging.getLogger("charging.billing")


class PoisonMessage(ValueError):
    """A message that can never become a stored CDR; the text is the reason kept with the dead letter."""


def parse_cdr(payload: bytes) -> Cdr:
    """The CDR in a Kafka message value, or PoisonMessage saying why it is none."""
    try:
        cdr = Cdr.model_validate_json(payload)
    except ValidationError:
        raise PoisonMessage(_why_not_a_cdr(payload)) from None
    except Exception as exc:  # a validator tripping over values no schema anticipated
        raise PoisonMessage(f"invalid CDR: {exc}") from None
    try:
        measure(cdr)
    except ImpossibleCdr as exc:
        raise PoisonMessage(f"impossible values: {exc}") from None
    for name, limit in _TEXT_LIMITS:
        value = getattr(cdr, name)
        if value is not None and len(value) > limit:
            raise PoisonMessage(f"impossible values: {name} is longer than {limit} characters")
    return cdr


# The stored columns' sizes (billing/models.py): longer values are no real identifiers.
_TEXT_LIMITS = (
    ("cdr_id", 64),
    ("served_party", 255),
    ("ims_charging_identifier", 255),
    ("session_id", 255),
    ("node_address", 255),
    ("called_party_address", 255),
)


def _why_not_a_cdr(payload: bytes) -> str:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8: {exc}"
    try:
        data = json.loads(text)
    except ValueError as exc:
        return f"not JSON: {exc}"
    if not isinstance(data, dict):
        return f"not a JSON object but {type(data).__name__}"
    version = schema_version_of(data)
    if version not in SUPPORTED_VERSIONS:
        return f"unknown schema version {data.get('schema_version')!r} (supported: {sorted(SUPPORTED_VERSIONS)})"
    try:
        Cdr.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(record)'}: {e['msg']}" for e in exc.errors())
        return f"invalid CDR: {problems}"
    except Exception as exc:
        return f"invalid CDR: {exc}"
    return "invalid CDR"


@dataclass(frozen=True, slots=True)
class Received:
    """A CDR as it came off the topic."""

    cdr: Cdr
    payload: str
    partition: int | None = None
    offset: int | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that went to the dead letters, with why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    payload: bytes
    reason: str


@dataclass(slots=True)
class BatchOutcome:
    stored: int = 0  # newly stored CDRs
    duplicates: int = 0  # already stored: delivered again, changed nothing
    unassigned: int = 0  # stored without an account (no subscriber matched the served party)
    unrated: int = 0  # stored for an account that has no tariff in force at the CDR's time
    dead_letters: int = 0  # newly dead-lettered messages
    feed: list[dict[str, Any]] = field(default_factory=list)  # the newly stored CDRs, for the live feed


@dataclass(frozen=True, slots=True)
class Booking:
    """What one rated CDR adds to an account's books."""

    account: Account
    started_at: datetime
    service: str
    duration_seconds: float
    octets: int
    amount_minor: int


@dataclass(slots=True)
class Ledger:
    """Additions to usage and invoice lines, gathered in memory and written in one go."""

    invoices: OpenInvoices
    usage: dict[tuple[int, Any, str], list[float]] = field(default_factory=dict)
    lines: dict[tuple[int, str], list[float]] = field(default_factory=dict)

    def book(self, conn: Connection, booking: Booking, sign: int = 1, invoice_id: int | None = None) -> int:
        """Add (sign=+1) or take back (sign=-1) a CDR; returns the invoice it lands on.

        ``invoice_id`` pins the invoice (taking back from the open invoice it was booked on);
        otherwise it is the open invoice of the CDR's period, or the next one open.
        """
        account = booking.account
        if invoice_id is None:
            invoice_id = self.invoices.invoice_for(conn, account, booking.started_at)
        delta = [sign, sign * booking.duration_seconds, sign * booking.octets, sign * booking.amount_minor]
        day = account.cycle.local_day(booking.started_at)
        _accumulate(self.usage.setdefault((account.id, day, booking.service), [0, 0.0, 0, 0]), delta)
        _accumulate(self.lines.setdefault((invoice_id, booking.service), [0, 0.0, 0, 0]), delta)
        return invoice_id

    def flush(self, conn: Connection) -> None:
        usage_rows = [
            {
                "account_id": account_id,
                "day": day,
                "service": service,
                "cdr_count": int(c),
                "duration_seconds": float(d),
                "octets": int(o),
                "amount_minor": int(a),
            }
            for (account_id, day, service), (c, d, o, a) in self.usage.items()
        ]
        line_rows = [
            {
                "invoice_id": invoice_id,
                "service": service,
                "cdr_count": int(c),
                "duration_seconds": float(d),
                "octets": int(o),
                "amount_minor": int(a),
            }
            for (invoice_id, service), (c, d, o, a) in self.lines.items()
        ]
        add_to_counters(conn, models.usage_daily, ["account_id", "day", "service"], usage_rows)
        add_to_counters(conn, models.invoice_lines, ["invoice_id", "service"], line_rows)
        self.usage.clear()
        self.lines.clear()


def _accumulate(counters: list[float], delta: list[float]) -> None:
    for index, value in enumerate(delta):
        counters[index] += value


def charge_rows(
    rating: Rating, version: PlanVersion, account: Account, cdr_row_id: int, invoice_id: int, charged_at: datetime
) -> list[dict[str, Any]]:
    return [
        {
            "cdr_row_id": cdr_row_id,
            "account_id": account.id,
            "invoice_id": invoice_id if charge.component in SUBSCRIBER_COMPONENTS else None,
            "tariff_version_id": version.id,
            "component": charge.component.value,
            "service": charge.service,
            "band": charge.band,
            "destination": charge.destination,
            "partner_ioi": charge.partner_ioi,
            "quantity": int(charge.quantity),
            "amount_minor": charge.amount_minor,
            "currency": version.plan.currency,
            "charged_at": charged_at,
        }
        for charge in rating.charges
    ]


@dataclass(frozen=True, slots=True)
class Assessment:
    """A CDR judged against the books: whose it is and what it costs (both None when nobody's)."""

    account: Account | None
    version: PlanVersion | None
    rating: Rating | None

    @property
    def booked(self) -> bool:
        return self.account is not None and self.rating is not None and self.rating.rated


def assess(
    cdr: Cdr, owner: int | None, accounts: dict[int, Account], plans: PlanIndex, usage: Usage | None = None
) -> Assessment:
    account = accounts.get(owner) if owner is not None else None
    if account is None:
        return Assessment(None, None, None)
    version = plans.effective(account.tariff_plan, rated_at(cdr))
    if version is None:
        return Assessment(account, None, None)
    return Assessment(account, version, rate(cdr, version.plan, usage))


def books_for(
    conn: Connection, plan_book: PlanBook, cdrs: list[Cdr]
) -> tuple[dict[str, int], dict[int, Account], PlanIndex]:
    """Owner per normalised served party, the accounts involved and their tariff versions."""
    identities = {normalize_identity(c.served_party) for c in cdrs if c.served_party}
    owners = owners_of(conn, identities)
    accounts = accounts_by_id(conn, set(owners.values()))
    plans = plan_book.load(conn, {a.tariff_plan for a in accounts.values() if a.tariff_plan})
    return owners, accounts, plans


def owner_of(cdr: Cdr, owners: dict[str, int]) -> int | None:
    return owners.get(normalize_identity(cdr.served_party)) if cdr.served_party else None


def store_batch(
    conn: Connection,
    received: list[Received],
    rejected: list[Rejected],
    *,
    now: datetime,
    plan_book: PlanBook,
) -> BatchOutcome:
    outcome = BatchOutcome()
    if rejected:
        table = models.dead_letters
        result = conn.execute(
            insert_ignoring_duplicates(conn, table, ["topic", "kafka_partition", "kafka_offset"]).returning(table.c.id),
            [
                {
                    "topic": r.topic,
                    "kafka_partition": r.partition,
                    "kafka_offset": r.offset,
                    "message_key": r.key,
                    "payload": r.payload,
                    "reason": r.reason,
                    "published": False,
                    "received_at": now,
                }
                for r in rejected
            ],
        )
        outcome.dead_letters = len(result.all())  # executemany's rowcount is not reliable on every driver
    unique: dict[str, Received] = {}
    for item in received:
        unique.setdefault(item.cdr.cdr_id, item)
    outcome.duplicates = len(received) - len(unique)
    if not unique:
        return outcome
    table = models.cdrs
    stored_before = set(conn.execute(select(table.c.cdr_id).where(table.c.cdr_id.in_(list(unique)))).scalars())
    items = [item for cdr_id, item in unique.items() if cdr_id not in stored_before]
    outcome.duplicates += len(stored_before)
    if not items:
        return outcome
    owners, accounts, plans = books_for(conn, plan_book, [item.cdr for item in items])
    ledger = Ledger(OpenInvoices(now))
    rows = []
    measured: dict[str, tuple[datetime, Usage]] = {}
    assessments: dict[str, Assessment] = {}
    wanted: list[tuple[Account, datetime] | None] = []
    for item in items:
        cdr = item.cdr
        usage = measure(cdr)
        judged = assessments[cdr.cdr_id] = assess(cdr, owner_of(cdr, owners), accounts, plans, usage)
        measured[cdr.cdr_id] = (rated_at(cdr), usage)
        account = judged.account if judged.booked else None
        wanted.append((account, measured[cdr.cdr_id][0]) if account is not None else None)
    # The invoices are found before the insert so each row goes in with its own: a CDR that another
    # consumer inserts meanwhile is skipped by the insert and never booked here (at worst an empty
    # invoice of its period was opened, which the cycle run would open anyway).
    booked_wanted = [w for w in wanted if w is not None]
    booked_invoices = iter(ledger.invoices.invoices_for(conn, booked_wanted))
    invoice_by_cdr = {
        item.cdr.cdr_id: next(booked_invoices) for item, w in zip(items, wanted, strict=True) if w is not None
    }
    for item in items:
        cdr = item.cdr
        judged = assessments[cdr.cdr_id]
        started_at, usage = measured[cdr.cdr_id]
        rows.append(
            {
                "cdr_id": cdr.cdr_id,
                "account_id": judged.account.id if judged.account else None,
                "served_party": cdr.served_party,
                "icid": cdr.ims_charging_identifier,
                "session_id": cdr.session_id,
                "node_address": cdr.node_address,
                "record_type": cdr.record_type.value,
                "service": judged.rating.service if judged.booked and judged.rating else None,
                "called_party": cdr.called_party_address,
                "started_at": started_at,
                "duration_seconds": usage.duration_seconds,
                "octets": usage.octets,
                "amount_minor": judged.rating.subscriber_minor if judged.booked and judged.rating else 0,
                "invoice_id": invoice_by_cdr.get(cdr.cdr_id),
                "payload": item.payload,
                "kafka_partition": item.partition,
                "kafka_offset": item.offset,
                "received_at": now,
            }
        )
    inserted = bulk_insert(conn, table, rows, conflict_on=["cdr_id"], returning=["id", "cdr_id"])
    outcome.stored = len(inserted)
    outcome.duplicates += len(items) - len(inserted)
    row_by_cdr = {row["cdr_id"]: row for row in rows}
    new_rows = sorted(inserted, key=lambda r: r[0])
    charges: list[dict[str, Any]] = []
    for row_id, cdr_id in new_rows:
        judged = assessments[cdr_id]
        if judged.account is None:
            outcome.unassigned += 1
        elif judged.rating is None:
            outcome.unrated += 1
        if judged.booked:
            assert judged.account is not None and judged.rating is not None and judged.version is not None
            started_at, usage = measured[cdr_id]
            booking = Booking(
                judged.account,
                started_at,
                judged.rating.service,
                usage.duration_seconds,
                usage.octets,
                judged.rating.subscriber_minor,
            )
            invoice_id = ledger.book(conn, booking, invoice_id=invoice_by_cdr[cdr_id])
            charges += charge_rows(judged.rating, judged.version, judged.account, row_id, invoice_id, started_at)
        outcome.feed.append(feed_item(row_id, row_by_cdr[cdr_id]))
    bulk_insert(conn, models.charges, charges)
    ledger.flush(conn)
    return outcome


def feed_item(row_id: int, row: Any) -> dict[str, Any]:
    """The fields the page's live feed shows of a stored CDR (a table row or the values inserted)."""
    get = row.get if isinstance(row, dict) else row._mapping.get
    started = get("started_at")
    return {
        "id": row_id,
        "cdr_id": get("cdr_id"),
        "account_id": get("account_id"),
        "served_party": get("served_party"),
        "icid": get("icid"),
        "node_address": get("node_address"),
        "record_type": get("record_type"),
        "service": get("service"),
        "called_party": get("called_party"),
        "started_at": started.isoformat() if started else None,
        "duration_seconds": get("duration_seconds"),
        "amount_minor": get("amount_minor"),
    }


def unpublished_dead_letters(conn: Connection, limit: int = 500) -> list[Any]:
    table = models.dead_letters
    return list(conn.execute(select(table).where(table.c.published.is_(False)).order_by(table.c.id).limit(limit)).all())
