"""Storing a batch: idempotent on cdr_id, books usage and the open invoice, keeps unknown parties.

Real parts: SQLite and PostgreSQL (the ``database`` fixture).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import select

from billing import models
from billing.catalog import add_subscriber
from billing.consumer import Batch, BillingConsumer
from billing.ingest import PoisonMessage, Received, parse_cdr
from billing.rating import ServiceTariff
from billing.sql import binder
from charging.cdr import Cdr, RecordType
from tests.billing.conftest import Books, make_books
from tests.billing.factories import make_cdr, voice_plan
from tests.conftest import Database

MARCH = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


def test_a_batch_stored_twice_is_booked_once(books: Books) -> None:
    batch = [make_cdr(start=MARCH, duration=61), make_cdr(start=MARCH, duration=30, method="MESSAGE")]
    first = books.store(batch)
    again = books.store(batch)
    assert (first.stored, first.duplicates) == (2, 0)
    assert (again.stored, again.duplicates) == (0, 2)
    assert books.count(models.cdrs) == 2
    assert books.count(models.charges) == 3  # voice usage + set-up, message
    assert books.total(models.usage_daily.c.amount_minor) == 2 * 6 + 5 + 9
    assert books.total(models.invoice_lines.c.amount_minor) == 2 * 6 + 5 + 9
    assert books.total(models.usage_daily.c.cdr_count) == 2


def test_the_same_cdr_twice_in_one_batch_is_stored_once(books: Books) -> None:
    cdr = make_cdr(start=MARCH)
    outcome = books.store([cdr, cdr])
    assert (outcome.stored, outcome.duplicates) == (1, 1)
    assert books.total(models.invoice_lines.c.cdr_count) == 1


def test_usage_is_summed_per_local_day_and_service(books: Books) -> None:
    books.store(
        [
            make_cdr(start=MARCH, duration=60),
            make_cdr(start=MARCH.replace(hour=23, minute=59), duration=60),
            make_cdr(start=datetime(2026, 3, 11, 0, 1, tzinfo=UTC), duration=120),
            make_cdr(start=MARCH, method="MESSAGE", duration=0),
        ]
    )
    with books.engine.connect() as conn:
        rows = conn.execute(
            select(
                models.usage_daily.c.day,
                models.usage_daily.c.service,
                models.usage_daily.c.cdr_count,
                models.usage_daily.c.duration_seconds,
                models.usage_daily.c.amount_minor,
            ).order_by(models.usage_daily.c.day, models.usage_daily.c.service)
        ).all()
    assert [tuple(r) for r in rows] == [
        (date(2026, 3, 10), "messaging", 1, 0.0, 9),
        (date(2026, 3, 10), "voice", 2, 120.0, 2 * (6 + 5)),
        (date(2026, 3, 11), "voice", 1, 120.0, 12 + 5),
    ]


def test_cdrs_of_one_period_share_the_open_invoice_and_the_next_period_opens_another(books: Books) -> None:
    books.store(
        [
            make_cdr(start=MARCH),
            make_cdr(start=MARCH.replace(day=31, hour=22)),
            make_cdr(start=datetime(2026, 4, 1, tzinfo=UTC)),
        ]
    )
    with books.engine.connect() as conn:
        invoices = conn.execute(
            select(models.invoices.c.period_start, models.invoices.c.status).order_by(models.invoices.c.period_start)
        ).all()
    assert [(i.period_start, i.status) for i in invoices] == [
        (datetime(2026, 3, 1, tzinfo=UTC), "open"),
        (datetime(2026, 4, 1, tzinfo=UTC), "open"),
    ]


def test_a_cdr_of_nobody_is_stored_unassigned_and_not_charged(books: Books) -> None:
    outcome = books.store([make_cdr(served_party="sip:stranger@elsewhere.net")])
    assert (outcome.stored, outcome.unassigned) == (1, 1)
    with books.engine.connect() as conn:
        row = conn.execute(select(models.cdrs)).one()
    assert row.account_id is None and row.amount_minor == 0
    assert books.count(models.charges) == 0


def test_served_party_is_matched_after_normalisation(books: Books) -> None:
    outcome = books.store(
        [make_cdr(served_party="SIP:alice@HOME.NET;transport=tcp"), make_cdr(served_party="tel:+49-170-1234567")]
    )
    assert outcome.unassigned == 0
    with books.engine.begin() as conn:
        assert add_subscriber(conn, books.account.id, "sip:alice@Home.Net", now=MARCH) == "sip:alice@home.net"


def test_charges_name_component_tariff_version_and_invoice(books: Books) -> None:
    books.store([make_cdr(start=MARCH, duration=61, iois=("home.net", "other.net"))])
    with books.engine.connect() as conn:
        rows = conn.execute(select(models.charges).order_by(models.charges.c.component)).all()
    assert [(r.component, r.amount_minor, r.invoice_id is not None) for r in rows] == [
        ("setup", 5, True),
        ("termination_payable", 6, False),
        ("usage", 12, True),
    ]
    assert {r.tariff_version_id for r in rows} == {1}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"schema_version": 99, "cdr_id": "x"}', "unknown schema version 99"),
        (b'{"schema_version": 1, "cdr_id": "x"}', "invalid CDR: record_type"),
    ],
)
def test_poison_messages_are_refused_with_the_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(PoisonMessage, match=reason):
        parse_cdr(payload)


def test_impossible_values_are_poison() -> None:
    cdr = make_cdr(duration=60).model_copy(update={"duration_seconds": 86_400.0})
    with pytest.raises(PoisonMessage, match="impossible values"):
        parse_cdr(cdr.to_json())
    too_long = make_cdr(served_party="sip:" + "a" * 300 + "@home.net")
    with pytest.raises(PoisonMessage, match="served_party is longer than 255"):
        parse_cdr(too_long.to_json())
    assert parse_cdr(make_cdr().to_json()).served_party == "sip:alice@home.net"


def test_a_cdr_the_database_refuses_is_dead_lettered_alone_and_its_batch_neighbours_are_booked(
    database: Database,
) -> None:
    absurd = voice_plan(
        peak=False,
        time_zone="UTC",
        services=[
            ServiceTariff(
                service="voice", methods=["INVITE"], increment_seconds=60, prices={"offpeak": Decimal(10**18)}
            ),
            ServiceTariff(service="messaging", methods=["MESSAGE"], basis="event", prices={"offpeak": Decimal(9)}),
        ],
    )
    books = make_books(database.engine, absurd)
    consumer = BillingConsumer(database.engine, bootstrap="unused:9092", topic="cdrs", dead_letter_topic="dead")
    overflowing = make_cdr(start=MARCH, duration=1200)  # 20 minutes at 10^18: beyond a 64-bit amount
    messages = [make_cdr(start=MARCH, method="MESSAGE", duration=0) for _ in range(2)]
    batch = Batch(
        received=[
            Received(c, c.to_json().decode(), 0, offset)
            for offset, c in enumerate([messages[0], overflowing, messages[1]])
        ]
    )
    outcome = consumer.store(batch)
    assert outcome is not None
    assert (outcome.stored, outcome.dead_letters) == (2, 1)
    with database.engine.connect() as conn:
        dead = conn.execute(select(models.dead_letters)).one()
    assert dead.kafka_offset == 1 and dead.reason.startswith("cannot be stored")
    assert books.total(models.invoice_lines.c.amount_minor) == 18


def test_a_batch_of_parsed_records_and_one_of_models_are_booked_alike(books: Books) -> None:
    """The consumer stores ``Incoming`` records; callers holding ``Cdr`` models store ``Received`` ones."""

    def shapes(tag: str) -> list[Cdr]:
        return [
            make_cdr(session_id=f"{tag}-1", start=MARCH, duration=61, iois=("home.net", "other.net")),
            make_cdr(session_id=f"{tag}-2", start=MARCH, method="MESSAGE", duration=0),
            make_cdr(session_id=f"{tag}-3", start=MARCH, served_party="sip:stranger@elsewhere.net"),
            make_cdr(session_id=f"{tag}-4", start=MARCH, record_type=RecordType.P_CSCF),
            make_cdr(session_id=f"{tag}-5", start=MARCH, sequence=2, duration=30.5, called="tel:+4930 1234"),
        ]

    parsed = books.store(shapes("parsed"))
    models_ = books.store(shapes("models"), parsed=False)
    assert (parsed.stored, parsed.unassigned) == (models_.stored, models_.unassigned) == (5, 1)
    columns = ["account_id", "service", "amount_minor", "invoice_id", "started_at", "duration_seconds", "octets"]
    with books.engine.connect() as conn:
        rows = conn.execute(select(models.cdrs).order_by(models.cdrs.c.id)).all()
        charges = conn.execute(select(models.charges).order_by(models.charges.c.id)).all()
    by_row = {row.id: row.session_id.split("-")[0] for row in rows}
    assert [[getattr(r, c) for c in columns] for r in rows[:5]] == [[getattr(r, c) for c in columns] for r in rows[5:]]
    charge_columns = ["component", "service", "amount_minor", "quantity", "band", "invoice_id", "charged_at"]
    kept = {
        tag: [[getattr(c, k) for k in charge_columns] for c in charges if by_row[c.cdr_row_id] == tag]
        for tag in by_row.values()
    }
    assert kept["parsed"] == kept["models"] and len(kept["parsed"]) == 5
    assert [item["started_at"] for item in parsed.feed] == [item["started_at"] for item in models_.feed]


def test_utc_times_go_to_sqlite_as_sqlalchemy_writes_them(database: Database) -> None:
    with database.engine.connect() as conn:
        bind = binder(conn, models.cdrs.c.started_at)
        generic = models.cdrs.c.started_at.type._cached_bind_processor(conn.dialect)
    assert generic is not None
    berlin = timezone(timedelta(hours=1))
    for instant in (MARCH, datetime(2026, 3, 29, 1, 59, 59, 999_999, tzinfo=berlin), datetime(1, 1, 1, tzinfo=UTC)):
        assert bind(instant) == generic(instant)
    assert bind(None) is None
