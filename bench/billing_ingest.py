"""Billing ingestion benchmark: CDRs stored, rated and committed per second, against a plain consumer.

Run from the repository root::

    .venv/bin/python -m bench.billing_ingest                  # 20 000 CDRs, SQLite file, embedded broker
    .venv/bin/python -m bench.billing_ingest --count 2000     # a smoke test (CI)
    .venv/bin/python -m bench.billing_ingest --database postgresql+psycopg://postgres@127.0.0.1:5432/test

It fills a fresh topic (4 partitions) with N CDRs of an IMS voice/messaging mix (90 % of
them for 100 subscribed accounts on a tariff with peak/off-peak bands, destinations and
interconnect; 10 % for unknown parties, stored unassigned), then reads the whole topic twice,
each time as a new consumer group from the earliest offset:

* baseline: a plain kafka-python consumer that polls and does nothing with the records;
* billing: ``BillingConsumer`` rounds (parse, one transaction per batch that stores, rates,
  books usage and invoice lines, then the offset commit).

Each clock starts when the first records arrive, so the group join (seconds, on tansu) is
not counted, and stops when the last record is consumed (baseline) or its batch's offsets
are committed (billing).  The last line is one JSON object:
``{"cdr_per_s": N, "raw_consume_per_s": N, "ratio": R}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from decimal import Decimal
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer
from sqlalchemy import func, select, text

from billing import models
from billing.catalog import AccountSpec, create_account, set_tariff
from billing.consumer import BillingConsumer
from billing.rating import (
    DestinationRate,
    InterconnectPartner,
    InterconnectTariff,
    ServiceTariff,
    TariffPlan,
    TimeBand,
)
from billing.settings import BillingSettings
from charging.broker import EmbeddedBroker, consumer_config, create_topic, producer_config
from charging.cdr import CauseForRecordClosing, Cdr, InterOperatorIdentifiers, RecordType, cdr_id_for
from charging.db import make_engine, migrate

ACCOUNTS = 100
START = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)


def tariff() -> TariffPlan:
    return TariffPlan(
        currency="EUR",
        time_zone="Europe/Berlin",
        default_band="offpeak",
        bands=[TimeBand(name="peak", weekdays=[0, 1, 2, 3, 4], start=clock_time(8), end=clock_time(20))],
        services=[
            ServiceTariff(
                service="voice",
                methods=["INVITE"],
                increment_seconds=60,
                prices={"peak": Decimal(9), "offpeak": Decimal(4)},
                setup_minor=5,
                destinations=[
                    DestinationRate(prefix="4915", prices={"offpeak": Decimal(19)}),
                    DestinationRate(prefix="1", prices={"offpeak": Decimal(25)}),
                ],
            ),
            ServiceTariff(service="messaging", methods=["MESSAGE"], basis="event", prices={"offpeak": Decimal(9)}),
        ],
        interconnect=InterconnectTariff(
            home_ioi="home.net",
            partners=[InterconnectPartner(ioi="other.net", payable_per_increment=Decimal(2))],
        ),
    )


def make_cdrs(count: int, seed: int = 7) -> list[Cdr]:
    rng = random.Random(seed)
    cdrs = []
    for index in range(count):
        session = f"bench-{index}"
        known = rng.random() < 0.9
        party = f"sip:user{rng.randrange(ACCOUNTS)}@home.net" if known else f"sip:guest{index}@visited.net"
        start = START + timedelta(seconds=index * 7)
        message = rng.random() < 0.2
        duration = 0.0 if message else float(rng.randrange(5, 900))
        called = rng.choice(["tel:+4930123456", "tel:+4915112345678", "tel:+12125550100"])
        cdrs.append(
            Cdr(
                cdr_id=cdr_id_for("scscf.home.net", session, None),
                record_type=RecordType.S_CSCF,
                node_functionality="S_CSCF",
                node_address="scscf.home.net",
                session_id=session,
                ims_charging_identifier=f"icid-{session}",
                inter_operator_identifiers=[
                    InterOperatorIdentifiers(originating_ioi="home.net", terminating_ioi="other.net")
                ],
                sip_method="MESSAGE" if message else "INVITE",
                called_party_address=called,
                served_party=party,
                service_delivery_start_time_stamp=start,
                record_opening_time=start,
                record_closure_time=start + timedelta(seconds=duration),
                duration_seconds=duration,
                cause_for_record_closing=CauseForRecordClosing.SERVICE_DELIVERY_END_SUCCESSFULLY,
                local_record_sequence_number=index,
            )
        )
    return cdrs


def fill_topic(bootstrap: str, topic: str, cdrs: list[Cdr]) -> float:
    producer = KafkaProducer(**producer_config(bootstrap, linger_ms=20, batch_size=256 * 1024))
    started = time.perf_counter()
    for cdr in cdrs:
        producer.send(topic, key=cdr.partition_key.encode(), value=cdr.to_json())
    producer.flush(timeout=120)
    producer.close(timeout=10)
    return time.perf_counter() - started


def raw_consume(bootstrap: str, topic: str, count: int, batch: int) -> float:
    consumer = KafkaConsumer(**consumer_config(bootstrap, f"bench-raw-{uuid.uuid4().hex[:8]}", max_poll_records=batch))
    consumer.subscribe([topic])
    seen = 0
    started = 0.0
    try:
        while seen < count:
            records = consumer.poll(timeout_ms=200, max_records=batch)
            got = sum(len(messages) for messages in records.values())
            if got and not started:
                started = time.perf_counter()
            seen += got
        return time.perf_counter() - started
    finally:
        consumer.close(autocommit=False)


def billing_consume(
    engine: object, bootstrap: str, topic: str, count: int, batch: int
) -> tuple[float, BillingConsumer]:
    settings = BillingSettings(consumer_group=f"bench-billing-{uuid.uuid4().hex[:8]}", batch_max_records=batch)
    consumer = BillingConsumer(
        engine,  # type: ignore[arg-type]
        bootstrap=bootstrap,
        topic=topic,
        dead_letter_topic=f"{topic}.dead",
        settings=settings,
        name="bench",
    )
    consumer.open()
    started = 0.0
    try:
        while consumer.totals.stored + consumer.totals.duplicates < count:
            batch_records = consumer.poll_batch()
            if not batch_records.size:
                continue
            if not started:
                started = time.perf_counter()
            if consumer.store(batch_records) is not None:
                consumer.commit(batch_records)
        return time.perf_counter() - started, consumer
    finally:
        consumer.close()


def prepare_database(url: str) -> object:
    schema = None
    if url.startswith("postgresql"):
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        with make_engine(url).begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    engine = make_engine(url, schema=schema)
    migrate(engine)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        set_tariff(conn, "standard", tariff(), effective_from=now, now=now)
        for number in range(ACCOUNTS):
            spec = AccountSpec(name=f"user{number}", tariff_plan="standard", subscribers=[f"sip:user{number}@home.net"])
            create_account(
                conn, spec, now=now, default_currency="EUR", default_time_zone="Europe/Berlin", default_taxes=[]
            )
    engine.schema_for_cleanup = schema  # type: ignore[attr-defined]
    return engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="CDRs in the topic")
    parser.add_argument("--batch", type=int, default=500, help="records per poll, for both consumers")
    parser.add_argument("--database", help="SQLAlchemy URL (default: a fresh SQLite file)")
    parser.add_argument("--bootstrap", help="an existing broker (default: the embedded tansu)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench-billing-"))
    url = args.database or f"sqlite:///{workdir / 'billing.db'}"
    broker = None if args.bootstrap else EmbeddedBroker().start()
    bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
    try:
        topic = f"bench-cdrs-{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, topic, 4)
        cdrs = make_cdrs(args.count)
        produce_seconds = fill_topic(bootstrap, topic, cdrs)
        engine = prepare_database(url)
        print(
            f"python {platform.python_version()}, {platform.machine()}, database {url.split(':')[0]}, "
            f"{args.count} CDRs in 4 partitions (produced in {produce_seconds:.1f} s), batches of {args.batch}"
        )

        raw_seconds = raw_consume(bootstrap, topic, args.count, args.batch)
        raw_rate = args.count / raw_seconds
        print(f"baseline: plain kafka-python consumer    {raw_rate:10.0f} records/s  ({raw_seconds:.2f} s)")

        billing_seconds, consumer = billing_consume(engine, bootstrap, topic, args.count, args.batch)
        billing_rate = args.count / billing_seconds
        print(f"billing:  stored, rated, committed       {billing_rate:10.0f} CDRs/s     ({billing_seconds:.2f} s)")

        with engine.connect() as conn:  # type: ignore[attr-defined]
            stored = conn.execute(select(func.count()).select_from(models.cdrs)).scalar_one()
            charged = conn.execute(select(func.count()).select_from(models.charges)).scalar_one()
        totals = consumer.totals
        ratio = billing_rate / raw_rate
        print(f"stored {stored} CDRs ({totals.unassigned} unassigned), {charged} charges; ratio {ratio:.2f}")
        if stored != args.count:
            print(f"error: {stored} CDRs stored, expected {args.count}", file=sys.stderr)
            return 1
        schema = getattr(engine, "schema_for_cleanup", None)
        engine.dispose()  # type: ignore[attr-defined]
        if schema:
            with make_engine(url).begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        print(
            json.dumps(
                {
                    "cdr_per_s": round(billing_rate),
                    "raw_consume_per_s": round(raw_rate),
                    "ratio": round(billing_rate / raw_rate, 3),
                }
            )
        )
        return 0
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
