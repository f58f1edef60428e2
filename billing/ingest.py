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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple, overload

from pydantic import ValidationError
from sqlalchemy import Connection, select

from billing import models
from billing.catalog import Account, PlanBook, PlanIndex, PlanVersion, accounts_by_id, normalize_identity, owners_of
from billing.cycles import Period
from billing.invoicing import OpenInvoices
from billing.rating import (
    SUBSCRIBER_COMPONENTS,
    ImpossibleCdr,
    Measured,
    Priced,
    Rating,
    Usage,
    measure,
    price,
    rate,
    rated_at,
)
from billing.sql import add_to_counters, binder, existing, insert_ignoring_duplicates, insert_rows
from charging.cdr import SUPPORTED_VERSIONS, Cdr, RecordType, schema_version_of

log = logging.getLogger("charging.billing")


class PoisonMessage(ValueError):
    """A message that can never become a stored CDR; the text is the reason kept with the dead letter."""


def parse_cdr(payload: bytes) -> Cdr:
    """The CDR in a Kafka message value, or PoisonMessage saying why it is none."""
    return parse(payload)[0]


def parse(payload: bytes) -> tuple[Cdr, Usage]:
    """``parse_cdr`` with the usage the CDR measures (checked on the way, so it is measured once)."""
    try:
        cdr = Cdr.model_validate_json(payload)
    except ValidationError:
        raise PoisonMessage(_why_not_a_cdr(payload)) from None
    except Exception as exc:  # a validator tripping over values no schema anticipated
        raise PoisonMessage(f"invalid CDR: {exc}") from None
    try:
        usage = measure(cdr)
    except ImpossibleCdr as exc:
        raise PoisonMessage(f"impossible values: {exc}") from None
    for name, limit in _TEXT_LIMITS:
        value = getattr(cdr, name)
        if value is not None and len(value) > limit:
            raise PoisonMessage(f"impossible values: {name} is longer than {limit} characters")
    return cdr, usage


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


class Operators(NamedTuple):
    originating_ioi: str | None
    terminating_ioi: str | None


class Incoming(NamedTuple):
    """A CDR as the consumer keeps it from its poll to its transaction: what storing and rating read of
    it, with its message, in one flat tuple of plain values.  It serves as its own ``Received``
    (``.cdr`` is itself, ``.usage`` is made on demand).

    Thousands of parsed ``Cdr`` models (lists, sets, time zones: 18 objects the garbage collector
    tracks per CDR) held across a batch made collections cost as much as the parsing itself; this is
    one such object per CDR, and its time stamps are on ``datetime.UTC`` when they are UTC.
    """

    cdr_id: str
    record_type: str
    node_address: str
    session_id: str
    ims_charging_identifier: str | None
    served_party: str | None
    called_party_address: str | None
    sip_method: str | None
    ims_communication_service_identifier: str | None
    record_sequence_number: int | None
    operators: tuple[tuple[str | None, str | None], ...]  # (originating IOI, terminating IOI) pairs
    service_delivery_start_time_stamp: datetime | None
    record_opening_time: datetime
    payload: str
    partition: int | None
    offset: int | None
    duration_seconds: float
    octets: int

    @classmethod
    def of(cls, cdr: Cdr, usage: Usage, payload: str, partition: int | None, offset: int | None) -> Incoming:
        return cls(
            cdr.cdr_id,
            _RECORD_TYPES[cdr.record_type],
            cdr.node_address,
            cdr.session_id,
            cdr.ims_charging_identifier,
            cdr.served_party,
            cdr.called_party_address,
            cdr.sip_method,
            cdr.ims_communication_service_identifier,
            cdr.record_sequence_number,
            tuple((i.originating_ioi, i.terminating_ioi) for i in cdr.inter_operator_identifiers),
            _on_utc(cdr.service_delivery_start_time_stamp),
            _on_utc(cdr.record_opening_time),
            payload,
            partition,
            offset,
            usage.duration_seconds,
            usage.octets,
        )

    @property
    def cdr(self) -> Incoming:
        return self

    @property
    def usage(self) -> Usage:
        return Usage(self.duration_seconds, self.octets)

    @property
    def inter_operator_identifiers(self) -> tuple[Operators, ...]:
        return tuple(Operators(*pair) for pair in self.operators)

    @property
    def partition_key(self) -> str:
        return self.ims_charging_identifier or self.session_id


_ZERO = timedelta(0)


@overload
def _on_utc(value: datetime) -> datetime: ...
@overload
def _on_utc(value: None) -> None: ...
@overload
def _on_utc(value: datetime | None) -> datetime | None: ...


def _on_utc(value: datetime | None) -> datetime | None:
    """The same instant, on ``datetime.UTC`` when it is UTC (pydantic's own time zone objects are ones the
    garbage collector tracks, three per CDR)."""
    if value is None or value.tzinfo is UTC or value.utcoffset() != _ZERO:
        return value
    return value.replace(tzinfo=UTC)


class Received(NamedTuple):
    """A CDR as it came off the topic (the consumer's own form of it is ``Incoming``)."""

    cdr: Cdr
    payload: str
    partition: int | None = None
    offset: int | None = None
    usage: Usage | None = None  # measured when parsed; measured again when not given (a Cdr only)


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
        day = account.cycle.local_day(booking.started_at)
        self.add(
            account.id,
            day,
            invoice_id,
            booking.service,
            sign * booking.duration_seconds,
            sign * booking.octets,
            sign * booking.amount_minor,
            sign,
        )
        return invoice_id

    def add(
        self,
        account_id: int,
        day: date,
        invoice_id: int,
        service: str,
        duration_seconds: float,
        octets: int,
        amount_minor: int,
        count: int = 1,
    ) -> None:
        """Add one CDR's figures (negative to take them back) to its usage day and its invoice line."""
        for counters in (
            self.usage.setdefault((account_id, day, service), [0, 0.0, 0, 0]),
            self.lines.setdefault((invoice_id, service), [0, 0.0, 0, 0]),
        ):
            counters[0] += count
            counters[1] += duration_seconds
            counters[2] += octets
            counters[3] += amount_minor

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
    conn: Connection, plan_book: PlanBook, cdrs: Sequence[Cdr | Incoming]
) -> tuple[dict[str, int], dict[int, Account], PlanIndex]:
    """Owner per normalised served party, the accounts involved and their tariff versions."""
    identities = {_normalized(c.served_party) for c in cdrs if c.served_party}
    owners = owners_of(conn, identities)
    accounts = accounts_by_id(conn, set(owners.values()))
    plans = plan_book.load(conn, {a.tariff_plan for a in accounts.values() if a.tariff_plan})
    return owners, accounts, plans


def owner_of(cdr: Cdr | Incoming, owners: dict[str, int]) -> int | None:
    return owners.get(_normalized(cdr.served_party)) if cdr.served_party else None


_IDENTITIES: dict[str, str] = {}  # served party as received -> normalised (a pure function, remembered)
_IDENTITIES_KEPT = 100_000


def _normalized(identity: str) -> str:
    found = _IDENTITIES.get(identity)
    if found is None:
        if len(_IDENTITIES) >= _IDENTITIES_KEPT:
            _IDENTITIES.clear()
        found = _IDENTITIES[identity] = normalize_identity(identity)
    return found


_CDR_COLUMNS = (
    "cdr_id",
    "account_id",
    "served_party",
    "icid",
    "session_id",
    "node_address",
    "record_type",
    "service",
    "called_party",
    "started_at",
    "duration_seconds",
    "octets",
    "amount_minor",
    "invoice_id",
    "payload",
    "kafka_partition",
    "kafka_offset",
    "received_at",
)
_CHARGE_COLUMNS = (
    "cdr_row_id",
    "account_id",
    "invoice_id",
    "tariff_version_id",
    "component",
    "service",
    "band",
    "destination",
    "partner_ioi",
    "quantity",
    "amount_minor",
    "currency",
    "charged_at",
)
# Enum members as the plain strings stored (an enum's .value is a slow property).
_RECORD_TYPES: dict[str, str] = {member: member.value for member in RecordType}
_SUBSCRIBER_COMPONENTS = frozenset(component.value for component in SUBSCRIBER_COMPONENTS)


@dataclass(slots=True)
class _Judged:
    """One new CDR of a batch on its way into the books."""

    item: Received | Incoming
    duration_seconds: float
    octets: int
    started_at: datetime
    account: Account | None
    version: PlanVersion | None  # None with an account: no tariff in force (stored unrated)
    booked: bool = False
    service: str | None = None  # booked CDRs: the service, what the subscriber pays, the charges
    amount_minor: int = 0
    charges: tuple[Priced, ...] = ()
    local_day: date | None = None  # booked CDRs: the day of their usage, in the account's time zone
    period: Period | None = None  # booked CDRs: the bill period they started in
    invoice_id: int | None = None
    row: tuple[Any, ...] = ()


def store_batch(
    conn: Connection,
    received: Sequence[Received | Incoming],
    rejected: list[Rejected],
    *,
    now: datetime,
    plan_book: PlanBook,
    feed: bool = True,
) -> BatchOutcome:
    """Store, rate and book a batch in the caller's transaction; ``feed=False`` leaves ``outcome.feed`` empty."""
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
    unique: dict[str, Received | Incoming] = {}
    for item in received:
        unique.setdefault(item.cdr.cdr_id, item)
    outcome.duplicates = len(received) - len(unique)
    if not unique:
        return outcome
    table = models.cdrs
    stored_before = existing(conn, table, "cdr_id", list(unique))
    items = [item for cdr_id, item in unique.items() if cdr_id not in stored_before]
    outcome.duplicates += len(stored_before)
    if not items:
        return outcome
    owners, accounts, plans = books_for(conn, plan_book, [item.cdr for item in items])
    judged = [_judge(item, owners, accounts, plans) for item in items]
    # The invoices are found before the insert so each row goes in with its own: a CDR that another
    # consumer inserts meanwhile is skipped by the insert and never booked here (at worst an empty
    # invoice of its period was opened, which the cycle run would open anyway).
    ledger = Ledger(OpenInvoices(now))
    periods: dict[tuple[int, datetime], tuple[Account, Period]] = {}
    for one in judged:
        if one.booked:
            assert one.account is not None and one.period is not None
            periods.setdefault((one.account.id, one.period.start), (one.account, one.period))
    found = ledger.invoices.invoices_for_periods(conn, list(periods.values()))
    invoice_of = dict(zip(periods, found, strict=True))
    time_value = binder(conn, table.c.started_at)
    received_at = time_value(now)
    by_cdr: dict[str, _Judged] = {}
    rows = []
    for one in judged:
        item, cdr, account = one.item, one.item.cdr, one.account
        if one.booked:
            assert account is not None and one.period is not None
            one.invoice_id = invoice_of[(account.id, one.period.start)]
        one.row = (
            cdr.cdr_id,
            account.id if account is not None else None,
            cdr.served_party,
            cdr.ims_charging_identifier,
            cdr.session_id,
            cdr.node_address,
            _RECORD_TYPES[cdr.record_type],
            one.service,
            cdr.called_party_address,
            time_value(one.started_at),
            one.duration_seconds,
            one.octets,
            one.amount_minor,
            one.invoice_id,
            item.payload,
            item.partition,
            item.offset,
            received_at,
        )
        rows.append(one.row)
        by_cdr[cdr.cdr_id] = one
    inserted = insert_rows(conn, table, _CDR_COLUMNS, rows, conflict_on=["cdr_id"], returning=["id", "cdr_id"])
    outcome.stored = len(inserted)
    outcome.duplicates += len(items) - len(inserted)
    inserted.sort()
    charges: list[tuple[Any, ...]] = []
    for row_id, cdr_id in inserted:
        one = by_cdr[cdr_id]
        if one.account is None:
            outcome.unassigned += 1
        elif one.version is None:
            outcome.unrated += 1
        if one.booked:
            _book(one, row_id, ledger, charges)
        if feed:
            outcome.feed.append(_feed_item(row_id, one))
    insert_rows(conn, models.charges, _CHARGE_COLUMNS, charges)
    ledger.flush(conn)
    return outcome


def _judge(
    item: Received | Incoming, owners: dict[str, int], accounts: dict[int, Account], plans: PlanIndex
) -> _Judged:
    """Whose a CDR is and what it costs (what ``assess`` says), with where it goes in the books."""
    cdr = item.cdr
    measured: Measured
    if isinstance(item, Incoming):
        measured = item  # it carries the two figures itself
    elif item.usage is not None:
        measured = item.usage
    else:
        assert isinstance(cdr, Cdr)
        measured = measure(cdr)
    started_at = cdr.service_delivery_start_time_stamp or cdr.record_opening_time
    party = cdr.served_party
    owner = owners.get(_normalized(party)) if party else None
    account = accounts.get(owner) if owner is not None else None
    one = _Judged(item, measured.duration_seconds, measured.octets, started_at, account, None)
    if account is None:
        return one
    one.version = version = plans.effective(account.tariff_plan, started_at)
    if version is None:
        return one
    service, rated, charges, amount_minor = price(cdr, version.plan, measured)
    if rated:
        cycle = account.cycle
        one.booked = True
        one.service, one.amount_minor, one.charges = service, amount_minor, charges
        one.local_day = local_day = started_at.astimezone(cycle.zone).date()
        one.period = cycle.period_of_local_day(local_day)
    return one


def _book(one: _Judged, row_id: int, ledger: Ledger, charges: list[tuple[Any, ...]]) -> None:
    """Add a newly stored CDR to its usage day and invoice line, and its charges to ``charges``."""
    account, version, invoice_id, service = one.account, one.version, one.invoice_id, one.service
    assert account is not None and version is not None and invoice_id is not None and service is not None
    assert one.local_day is not None
    ledger.add(account.id, one.local_day, invoice_id, service, one.duration_seconds, one.octets, one.amount_minor)
    charged_at = one.row[9]  # started_at, as the database takes it
    currency = version.plan.currency
    for component, name, amount, quantity, band, destination, partner in one.charges:
        charges.append(
            (
                row_id,
                account.id,
                invoice_id if component in _SUBSCRIBER_COMPONENTS else None,
                version.id,
                component,
                name,
                band,
                destination,
                partner,
                int(quantity),
                amount,
                currency,
                charged_at,
            )
        )


def _feed_item(row_id: int, one: _Judged) -> dict[str, Any]:
    row = one.row
    return {
        "id": row_id,
        "cdr_id": row[0],
        "account_id": row[1],
        "served_party": row[2],
        "icid": row[3],
        "node_address": row[5],
        "record_type": row[6],
        "service": row[7],
        "called_party": row[8],
        "started_at": one.started_at.isoformat(),
        "duration_seconds": row[10],
        "amount_minor": row[12],
    }


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
