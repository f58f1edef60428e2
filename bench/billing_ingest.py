"""Billing ingestion benchmark: CDRs stored, rated and committed per second, against a plain consumer.

Run from the repository root::

    .venv/bin/python -m bench.billing_ingest                  # 20 000 CDRs, SQLite file, embedded broker
    .venv/bin/python -m bench.billing_ingest --count 2000     # a smoke test (CI)
    .venv/bin/python -m bench.billing_ingest --database postgresql+psycopg://postgres@127.0.0.1:5432/test

It fills a fresh topic (4 partitions) with N CDRs of an IMS voice/messaging mix (90 % of
them for 100 subscribed accounts on a tariff with peak/off-peak bands, destinations and
interconnect; 10 % for unknown parties, stored unassigned), then reads the whole topic three times,
each time as a new consumer group from the earliest offset:

* baseline: a plain kafka-python consumer that polls and does nothing with the records;
* ceiling: the same consumer parsing every record as billing must before anything else
  (``billing.ingest.parse``: schema validation, usage, limits; it is how poison is found), storing
  nothing: no billing consumer in one process can go faster;
* billing: ``BillingConsumer`` rounds as ``BillingConsumer.run`` does them (poll and parse a
  batch while the store thread runs the previous one's transaction, which stores, rates, books
  usage and invoice lines; then that batch's offset commit).

On SQLite it then measures the floor of the store: the CPU SQLite's own code spends inserting again
the rows billing stored (``sqlite_floor``), which bounds any number of consumers, SQLite having one
writer.

All read with the same consumer settings (``charging.broker.consumer_config``), the same
``--batch`` records per poll, and the garbage-collector settings ``charging serve`` runs with
(``charging.serve.tune_gc``).  Each clock starts with the first poll made once the consumer has
joined its group, so the join (seconds, on tansu) is not counted but the fetch of the first
records is (kafka-python fetches in its IO thread, so records often arrive between polls; records
a poll brought before the clock started are left out of the rate), and stops when the last record
is consumed (baseline) or its batch's offsets are committed (billing).  Next to the rates it prints
the CPU time each side spent per record in this process (a PostgreSQL server's own work is not in
it), which varies far less than the rates when other work shares the machine.

``--consumers N`` (1 to 4) runs billing as it is deployed at scale: N processes, each one billing
consumer, in one consumer group sharing the 4 partitions (the baseline stays one consumer); the
processes hold back until each has its share of the partitions, so that no rebalance falls into
the measurement, and the output says how many ran on how many cores.  The last line is one JSON object:
``{"cdr_per_s": N, "raw_consume_per_s": N, "ratio": R, "billing_consumers": N, "cores": N,
"raw_cpu_us_per_record": X, "validate_only_per_s": N, "validate_only_ratio": R, "billing_cpu_us_per_cdr": X}``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import queue
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from decimal import Decimal
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from sqlalchemy import Engine, func, select, text

from billing import models
from billing.catalog import AccountSpec, create_account, set_tariff
from billing.consumer import Batch, BillingConsumer
from billing.ingest import parse
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
from charging.serve import tune_gc

ACCOUNTS = 100
PARTITIONS = 4
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
    return list(iter_cdrs(count, seed))


def iter_cdrs(count: int, seed: int = 7) -> Iterator[Cdr]:
    """The CDRs of the benchmark, one at a time (the process does not keep them: see ``main``)."""
    rng = random.Random(seed)
    for index in range(count):
        session = f"bench-{index}"
        known = rng.random() < 0.9
        party = f"sip:user{rng.randrange(ACCOUNTS)}@home.net" if known else f"sip:guest{index}@visited.net"
        start = START + timedelta(seconds=index * 7)
        message = rng.random() < 0.2
        duration = 0.0 if message else float(rng.randrange(5, 900))
        called = rng.choice(["tel:+4930123456", "tel:+4915112345678", "tel:+12125550100"])
        yield Cdr(
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


def fill_topic(bootstrap: str, topic: str, cdrs: Iterable[Cdr]) -> float:
    producer = KafkaProducer(**producer_config(bootstrap, linger_ms=20, batch_size=256 * 1024))
    started = time.perf_counter()
    for cdr in cdrs:
        producer.send(topic, key=cdr.partition_key.encode(), value=cdr.to_json())
    producer.flush(timeout=120)
    producer.close(timeout=10)
    return time.perf_counter() - started


@dataclass
class _Stopwatch:
    """Starts with the first poll made once the consumer has joined its group (so the join, seconds on
    tansu, is not measured, and the fetch of the first records is); records a poll brought before that
    are left out of the rate."""

    started: float = 0.0  # time.monotonic(): one clock for every process of the machine
    cpu_started: float = 0.0
    early: int = 0

    def poll(self, joined: bool) -> None:
        if joined and not self.started:
            self.started, self.cpu_started = time.monotonic(), time.process_time()

    def delivered(self, records: int) -> None:
        if not self.started:
            self.early += records

    def stop(self, count: int) -> tuple[float, float, int]:
        """Seconds, CPU seconds of this process, and records measured."""
        return time.monotonic() - self.started, time.process_time() - self.cpu_started, count - self.early


def _join(kafka: KafkaConsumer) -> None:
    """Poll until the group has given this consumer its partitions, then go back to their first records:
    what the joining polls brought (kafka-python fetches as soon as it has joined) is read again, on the
    clock."""
    while not kafka.assignment():
        kafka.poll(timeout_ms=100)
    kafka.seek_to_beginning(*kafka.assignment())


def raw_consume(
    bootstrap: str, topic: str, count: int, batch: int, *, validate: bool = False
) -> tuple[float, float, int]:
    """A plain consumer that does nothing with the records; ``validate``: that parses each as billing does
    first (``billing.ingest.parse``: the schema, the usage, the limits) and keeps nothing."""
    consumer = KafkaConsumer(**consumer_config(bootstrap, f"bench-raw-{uuid.uuid4().hex[:8]}", max_poll_records=batch))
    consumer.subscribe([topic])
    _join(consumer)
    seen = 0
    clock = _Stopwatch()
    try:
        while seen < count:
            clock.poll(bool(consumer.assignment()))
            records = consumer.poll(timeout_ms=200, max_records=batch)
            got = 0
            for messages in records.values():
                got += len(messages)
                if validate:
                    for message in messages:
                        parse(message.value)
            clock.delivered(got)
            seen += got
        return clock.stop(count)
    finally:
        consumer.close(autocommit=False)


class _TimedConsumer(BillingConsumer):
    """The billing consumer with the baseline's clock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stopwatch = _Stopwatch()  # (``clock`` is the consumer's own)

    def poll_batch(self) -> Batch:
        self.stopwatch.poll(bool(self.assigned))
        batch = super().poll_batch()
        self.stopwatch.delivered(batch.size)
        return batch


def _feed_listener(items: list[dict[str, object]]) -> None:
    """Stands in for the live feed that ``charging serve`` attaches: the consumer builds its items."""


def _consumer(engine: Engine, bootstrap: str, topic: str, group: str, batch: int, name: str) -> _TimedConsumer:
    return _TimedConsumer(
        engine,
        bootstrap=bootstrap,
        topic=topic,
        dead_letter_topic=f"{topic}.dead",
        settings=BillingSettings(consumer_group=group, batch_max_records=batch),
        name=name,
        on_stored=_feed_listener,
    )


def billing_consume(engine: Engine, bootstrap: str, topic: str, count: int, batch: int) -> tuple[float, float, int]:
    """One billing consumer in this process, until the last offset commit."""
    consumer = _consumer(engine, bootstrap, topic, f"bench-billing-{uuid.uuid4().hex[:8]}", batch, "bench")
    consumer.open()
    _join(consumer._consumer)  # the KafkaConsumer itself
    try:
        # The rounds of BillingConsumer.run: poll and parse a batch while the previous one is stored.
        while consumer.totals.stored + consumer.totals.duplicates < count:
            consumer.run_once()
        consumer.flush()  # the last batch's offsets
        return consumer.stopwatch.stop(count)
    finally:
        consumer.close()


def _billing_process(
    url: str,
    schema: str | None,
    bootstrap: str,
    topic: str,
    group: str,
    count: int,
    batch: int,
    stored: Any,
    owned: Any,
    index: int,
    go: Any,
    out: Any,
) -> None:
    """One of ``--consumers`` processes: joins the group, holds back until every process has its share of
    the partitions (so that no rebalance falls into the measurement), then consumes until the group has
    stored ``count`` CDRs in all."""
    engine = make_engine(url, schema=schema)
    consumer = _consumer(engine, bootstrap, topic, group, batch, f"bench-{os.getpid()}")
    consumer.open()
    tune_gc()
    kafka = consumer._consumer  # the KafkaConsumer itself: only the benchmark holds a group back like this
    try:
        while not go.is_set():
            kafka.poll(timeout_ms=100)  # joins and follows rebalances; what it brings is read again later
            assigned = kafka.assignment()
            if assigned:
                kafka.pause(*assigned)
            owned[index] = sum(1 << tp.partition for tp in assigned)
        kafka.seek_to_beginning(*kafka.assignment())
        kafka.resume(*kafka.assignment())
        while stored.value < count:
            outcome = consumer.run_once()  # returns once the batch it settled has its offsets committed
            if outcome is not None and outcome.stored:
                with stored.get_lock():
                    stored.value += outcome.stored
        consumer.flush()
        clock = consumer.stopwatch
        out.put((clock.started, time.monotonic(), time.process_time() - clock.cpu_started, clock.early))
    finally:
        consumer.close()
        engine.dispose()


def billing_consume_processes(
    url: str, schema: str | None, bootstrap: str, topic: str, count: int, batch: int, processes: int
) -> tuple[float, float, int]:
    """``processes`` billing consumers in one group: seconds from the first poll of any of them (once all
    have joined) to the last offset commit, the CPU seconds they spent meanwhile, records measured."""
    context = multiprocessing.get_context("spawn")
    stored = context.Value("q", 0)
    owned = context.Array("q", processes)  # per process: a bit per partition it has
    go = context.Event()
    out = context.Queue()
    group = f"bench-billing-{uuid.uuid4().hex[:8]}"
    workers = [
        context.Process(
            target=_billing_process,
            args=(url, schema, bootstrap, topic, group, count, batch, stored, owned, index, go, out),
        )
        for index in range(processes)
    ]
    for worker in workers:
        worker.start()
    settled_since = None
    while not go.is_set():  # every process owns partitions, none twice, all of them: for a second
        _check(workers)
        shares = [int(owned[index]) for index in range(processes)]
        union = 0
        for share in shares:
            union |= share
        split = all(shares) and union == (1 << PARTITIONS) - 1 and sum(map(int.bit_count, shares)) == PARTITIONS
        settled_since = (settled_since or time.monotonic()) if split else None
        if settled_since is not None and time.monotonic() - settled_since > 1.0:
            go.set()
        time.sleep(0.1)
    results: list[tuple[float, float, float, int]] = []
    while len(results) < len(workers):
        try:
            results.append(out.get(timeout=1))
        except queue.Empty:
            _check(workers)
    for worker in workers:
        worker.join(timeout=60)
    started = min(first for first, _, _, _ in results if first)
    seconds = max(end for _, end, _, _ in results) - started
    return seconds, sum(cpu for _, _, cpu, _ in results), count - sum(early for *_, early in results)


def _check(workers: list[Any]) -> None:
    failed = [worker.exitcode for worker in workers if worker.exitcode]
    if failed:
        raise RuntimeError(f"billing consumer processes failed (exit codes {failed})")


def sqlite_floor(path: Path, batch: int) -> float:
    """CPU microseconds per CDR that SQLite's own code spends storing the rows billing stored, and nothing
    else: the CDRs and their charges of the measured run, read back and inserted again into a copy of the
    database emptied of them, ``batch`` CDRs per transaction, with the pragmas of ``charging.db``
    (foreign keys, WAL, synchronous FULL).  SQLite has one writer: this is a floor under any consumer."""
    copy = path.with_name("floor.db")
    with sqlite3.connect(path) as source:
        cdrs = source.execute("SELECT * FROM billing_cdrs ORDER BY id").fetchall()
        charges = source.execute("SELECT * FROM billing_charges ORDER BY cdr_row_id").fetchall()
    shutil.copyfile(path, copy)
    db = sqlite3.connect(copy, isolation_level=None)
    try:
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
            db.execute(f"PRAGMA {pragma}")
        db.execute("DELETE FROM billing_charges")
        db.execute("DELETE FROM billing_cdrs")
        insert_cdr = f"INSERT INTO billing_cdrs VALUES ({','.join('?' * len(cdrs[0]))})"
        insert_charge = f"INSERT INTO billing_charges VALUES ({','.join('?' * len(charges[0]))})"
        of_cdr = _column(db, "billing_charges", "cdr_row_id")
        cdr_id = _column(db, "billing_cdrs", "id")
        started = time.process_time()
        taken = 0
        for first in range(0, len(cdrs), batch):
            rows = cdrs[first : first + batch]
            last_id = rows[-1][cdr_id]
            end = taken
            while end < len(charges) and charges[end][of_cdr] <= last_id:
                end += 1
            db.execute("BEGIN IMMEDIATE")
            db.executemany(insert_cdr, rows)
            db.executemany(insert_charge, charges[taken:end])
            db.execute("COMMIT")
            taken = end
        return (time.process_time() - started) / len(cdrs) * 1e6
    finally:
        db.close()
        copy.unlink()


def _column(db: sqlite3.Connection, table: str, name: str) -> int:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")].index(name)


def prepare_database(url: str) -> Engine:
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
    parser.add_argument("--batch", type=int, default=2000, help="records per poll, for both consumers")
    parser.add_argument("--database", help="SQLAlchemy URL (default: a fresh SQLite file)")
    parser.add_argument("--bootstrap", help="an existing broker (default: the embedded tansu)")
    parser.add_argument(
        "--consumers", type=int, default=1, help="billing consumer processes in the group (default: 1, in this one)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.consumers <= PARTITIONS:
        parser.error(f"--consumers: 1 to {PARTITIONS} (the topic's partitions)")

    workdir = Path(tempfile.mkdtemp(prefix="bench-billing-"))
    url = args.database or f"sqlite:///{workdir / 'billing.db'}"
    broker = None if args.bootstrap else EmbeddedBroker().start()
    bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
    cores = os.cpu_count() or 1
    try:
        topic = f"bench-cdrs-{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, topic, PARTITIONS)
        # Made while produced and not kept: N pydantic models alive in this process would make every
        # full garbage collection of the consumers measured here (billing's above all) walk them.
        produce_seconds = fill_topic(bootstrap, topic, iter_cdrs(args.count))
        engine = prepare_database(url)
        schema = getattr(engine, "schema_for_cleanup", None)
        tune_gc()  # as `charging serve` does once started; both consumers measured below run with it
        print(
            f"python {platform.python_version()}, {platform.machine()}, {cores} cores, database {url.split(':')[0]}, "
            f"{args.count} CDRs in 4 partitions (produced in {produce_seconds:.1f} s), batches of {args.batch}"
        )

        raw_seconds, raw_cpu, raw_measured = raw_consume(bootstrap, topic, args.count, args.batch)
        raw_rate = raw_measured / raw_seconds
        raw_cpu_us = raw_cpu / raw_measured * 1e6
        print(
            f"baseline: plain kafka-python consumer    {raw_rate:10.0f} records/s  ({raw_seconds:.2f} s,"
            f" {raw_cpu_us:.1f} us CPU per record)"
        )

        # The ceiling of any billing consumer in one process: the baseline's work plus the validation that
        # billing cannot skip (it is how poison is found), storing nothing.
        parse_seconds, parse_cpu, parse_measured = raw_consume(bootstrap, topic, args.count, args.batch, validate=True)
        parse_rate = parse_measured / parse_seconds
        parse_cpu_us = parse_cpu / parse_measured * 1e6
        print(
            f"ceiling:  plain consumer + validation    {parse_rate:10.0f} records/s  ({parse_seconds:.2f} s,"
            f" {parse_cpu_us:.1f} us CPU per record; ratio {parse_rate / raw_rate:.2f}; nothing stored)"
        )

        if args.consumers == 1:
            billing_seconds, billing_cpu, measured = billing_consume(engine, bootstrap, topic, args.count, args.batch)
            who = "1 consumer"
        else:
            billing_seconds, billing_cpu, measured = billing_consume_processes(
                url, schema, bootstrap, topic, args.count, args.batch, args.consumers
            )
            who = f"{args.consumers} consumer processes on {cores} cores, against 1 baseline consumer"
        billing_rate = measured / billing_seconds
        billing_cpu_us = billing_cpu / measured * 1e6
        print(
            f"billing:  stored, rated, committed       {billing_rate:10.0f} CDRs/s     ({billing_seconds:.2f} s,"
            f" {billing_cpu_us:.1f} us CPU per CDR; {who})"
        )

        cdrs = models.cdrs
        with engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(cdrs)).scalar_one()
            unassigned = conn.execute(select(func.count()).where(cdrs.c.account_id.is_(None))).scalar_one()
            charged = conn.execute(select(func.count()).select_from(models.charges)).scalar_one()
        ratio = billing_rate / raw_rate
        print(f"stored {stored} CDRs ({unassigned} unassigned), {charged} charges; ratio {ratio:.2f}")
        if stored != args.count:
            print(f"error: {stored} CDRs stored, expected {args.count}", file=sys.stderr)
            return 1
        engine.dispose()
        floor: dict[str, float] = {}
        if url.startswith("sqlite:///"):
            floor_us = sqlite_floor(Path(url.removeprefix("sqlite:///")), args.batch)
            floor = {
                "sqlite_floor_us_per_cdr": round(floor_us, 1),
                "sqlite_floor_ratio": round(1e6 / floor_us / raw_rate, 3),
            }
            print(
                f"floor:    SQLite's own code alone stores these rows at {floor_us:.1f} us CPU per CDR:"
                f" one writer, at most {1e6 / floor_us:.0f} CDRs/s, ratio {floor['sqlite_floor_ratio']:.2f}"
            )
        if schema:
            with make_engine(url).begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        print(
            json.dumps(
                {
                    "cdr_per_s": round(billing_rate),
                    "raw_consume_per_s": round(raw_rate),
                    "ratio": round(ratio, 3),
                    "billing_consumers": args.consumers,
                    "cores": cores,
                    "raw_cpu_us_per_record": round(raw_cpu_us, 1),
                    "validate_only_per_s": round(parse_rate),
                    "validate_only_ratio": round(parse_rate / raw_rate, 3),
                    "billing_cpu_us_per_cdr": round(billing_cpu_us, 1),
                    **floor,
                }
            )
        )
        return 0
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
