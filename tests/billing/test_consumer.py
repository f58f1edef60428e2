"""The Kafka consumer: exactly once in effect through redelivery, a crash between the database commit and
the offset commit, poison messages and a rebalance between two consumers.

Real parts: a Kafka-protocol broker (embedded tansu, or CHARGING_TEST_KAFKA), SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import Engine, select

from billing import models
from billing.consumer import BillingConsumer
from billing.settings import BillingSettings
from charging.broker import consumer_config
from charging.db import make_engine
from charging.metrics import Registry
from tests.billing.conftest import SESSION_TIMEOUT_MS, Books, Kafka, make_books, wait_until
from tests.billing.factories import make_cdr
from tests.conftest import POSTGRES_URL, Database
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
MARCH = datetime(2026, 3, 10, 21, 0, tzinfo=UTC)


def _consumer(
    engine: Engine, kafka: Kafka, topic: str, group: str, name: str = "billing", metrics: Registry | None = None
) -> BillingConsumer:
    settings = BillingSettings(
        consumer_group=group,
        poll_timeout_ms=100,
        retry_seconds=0.2,
        batch_max_records=50,
        session_timeout_ms=SESSION_TIMEOUT_MS,
    )
    return BillingConsumer(
        engine,
        bootstrap=kafka.bootstrap,
        topic=topic,
        dead_letter_topic=f"{topic}.dead",
        settings=settings,
        name=name,
        metrics=metrics,
    )


@contextmanager
def running(consumer: BillingConsumer) -> Iterator[BillingConsumer]:
    stop = threading.Event()
    consumer.open()
    thread = threading.Thread(target=consumer.run, args=(stop,), name=f"test-{consumer.name}")
    thread.start()
    try:
        yield consumer
    finally:
        stop.set()
        thread.join()
        consumer.close()


def _calls(count: int, start: datetime = MARCH) -> list:  # type: ignore[type-arg]
    return [make_cdr(start=start + timedelta(minutes=i), duration=60 + i) for i in range(count)]


def _books_state(engine: Engine) -> tuple[int, int, int, int, int]:
    with engine.connect() as conn:
        cdrs = conn.execute(select(models.cdrs.c.id)).all()
        charges = conn.execute(select(models.charges.c.amount_minor)).all()
        lines = conn.execute(select(models.invoice_lines.c.amount_minor, models.invoice_lines.c.cdr_count)).all()
        usage = conn.execute(select(models.usage_daily.c.amount_minor)).all()
    return (
        len(cdrs),
        len(charges),
        sum(c[0] for c in charges),
        sum(line[0] for line in lines) + 1000 * sum(line[1] for line in lines),
        sum(u[0] for u in usage),
    )


def _all_published(engine: Engine) -> bool:
    with engine.connect() as conn:  # a short transaction: on SQLite every transaction takes the write lock
        return all(row.published for row in conn.execute(select(models.dead_letters.c.published)))


def _committed(kafka: Kafka, topic: str, group: str, partitions: int = 4) -> int:
    reader = KafkaConsumer(**consumer_config(kafka.bootstrap, group))
    try:
        return sum(reader.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))
    finally:
        reader.close(autocommit=False)


def test_consumed_cdrs_are_booked_and_a_full_redelivery_changes_nothing(books: Books, kafka: Kafka) -> None:
    topic = kafka.new_topic()
    cdrs = [*_calls(30), make_cdr(served_party="sip:nobody@elsewhere.net", start=MARCH)]
    kafka.produce(topic, cdrs)
    group = f"g-{uuid.uuid4().hex[:8]}"
    metrics = Registry()
    with running(_consumer(books.engine, kafka, topic, group, metrics=metrics)) as first:
        wait_until(lambda: first.totals.stored == 31, what="31 CDRs stored")
        lag_zero = [f'billing_consumer_lag{{partition="{p}"}} 0' for p in range(4)]
        wait_until(lambda: all(line in metrics.exposition() for line in lag_zero), what="lag 0 on every partition")
    assert first.totals.unassigned == 1
    exposition = metrics.exposition()
    assert 'billing_cdrs_consumed_total{outcome="stored"} 31' in exposition
    assert 'billing_cdrs_consumed_total{outcome="unassigned"} 1' in exposition
    assert "billing_consume_rate " in exposition
    booked = _books_state(books.engine)
    assert booked[0] == 31 and booked[2] == sum(6 * (2 if 60 + i > 60 else 1) + 5 for i in range(30))
    assert _committed(kafka, topic, group) == 31  # offsets committed after the database commit

    # Another group reads the whole topic again: every CDR arrives a second time and changes nothing.
    with running(_consumer(books.engine, kafka, topic, f"{group}-again")) as second:
        wait_until(lambda: second.totals.duplicates == 31, what="31 redelivered CDRs")
    assert second.totals.stored == 0
    assert _books_state(books.engine) == booked


def test_a_consumer_killed_between_database_commit_and_offset_commit_charges_nothing_twice(
    database: Database, kafka: Kafka
) -> None:
    books = make_books(database.engine)
    topic = kafka.new_topic()
    kafka.produce(topic, _calls(20))
    group = f"g-{uuid.uuid4().hex[:8]}"
    doomed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.billing.crashing_consumer",
            database.url,
            database.schema or "",
            kafka.bootstrap,
            topic,
            group,
            "20",
            str(SESSION_TIMEOUT_MS),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert doomed.returncode == -9, doomed.stderr[-2000:]
    assert "stored 20" in doomed.stdout
    stored_by_the_dead = _books_state(books.engine)
    assert stored_by_the_dead[0] == 20
    assert _committed(kafka, topic, group) == 0  # it died before committing any offset

    with running(_consumer(books.engine, kafka, topic, group, name="successor")) as successor:
        wait_until(lambda: successor.totals.duplicates == 20, what="the 20 uncommitted CDRs redelivered")
    assert successor.totals.stored == 0
    assert _books_state(books.engine) == stored_by_the_dead
    assert _committed(kafka, topic, group) == 20


def test_poison_messages_go_to_the_dead_letters_with_their_reason_and_consumption_goes_on(
    books: Books, kafka: Kafka
) -> None:
    topic = kafka.new_topic(partitions=1)
    good_before, good_after = make_cdr(start=MARCH), make_cdr(start=MARCH)
    impossible = make_cdr(start=MARCH).model_copy(update={"duration_seconds": 99_999.0})
    kafka.produce(topic, [good_before])
    kafka.produce(
        topic,
        [],
        raw=[
            (b"k1", b"{broken"),
            (b"k2", b'{"schema_version": 7, "cdr_id": "future"}'),
            (b"k3", impossible.to_json()),
        ],
    )
    kafka.produce(topic, [good_after])
    with running(_consumer(books.engine, kafka, topic, f"g-{uuid.uuid4().hex[:8]}")) as consumer:
        wait_until(lambda: consumer.totals.stored == 2 and consumer.totals.dead_letters == 3, what="2 stored, 3 dead")
        wait_until(lambda: _all_published(books.engine), what="dead letters copied to the topic")
    with books.engine.connect() as conn:
        dead = conn.execute(select(models.dead_letters).order_by(models.dead_letters.c.kafka_offset)).all()
    assert [(d.kafka_offset, d.message_key) for d in dead] == [(1, b"k1"), (2, b"k2"), (3, b"k3")]
    assert dead[0].reason.startswith("not JSON")
    assert dead[1].reason.startswith("unknown schema version 7")
    assert dead[2].reason.startswith("impossible values")

    reader = KafkaConsumer(f"{topic}.dead", **consumer_config(kafka.bootstrap, None, consumer_timeout_ms=30_000))
    copies = []
    try:
        for message in reader:
            copies.append((message.key, dict(message.headers)["reason"].decode()))
            if len(copies) == 3:
                break
    finally:
        reader.close()
    reasons = dict(copies)  # the copies spread over the dead-letter topic's partitions by key
    assert sorted(reasons) == [b"k1", b"k2", b"k3"]
    assert reasons[b"k2"].startswith("unknown schema version 7")


def test_two_consumers_share_the_partitions_and_a_rebalance_loses_and_duplicates_nothing(
    books: Books, kafka: Kafka
) -> None:
    topic = kafka.new_topic(partitions=4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    waves = [_calls(40, MARCH), _calls(40, MARCH + timedelta(days=1)), _calls(40, MARCH + timedelta(days=2))]
    expected_amount = sum(6 * (2 if c.duration_seconds > 60 else 1) + 5 for wave in waves for c in wave)
    kafka.produce(topic, waves[0])
    first = _consumer(books.engine, kafka, topic, group, name="first")
    with running(first):
        wait_until(lambda: first.totals.stored == 40, what="first wave")
        second = _consumer(books.engine, kafka, topic, group, name="second")
        with running(second):
            wait_until(
                lambda: second.assigned and first.assigned and len(first.assigned | second.assigned) == 4,
                what="the partitions split between both consumers",
            )
            assert not first.assigned & second.assigned
            kafka.produce(topic, waves[1])
            wait_until(lambda: first.totals.stored + second.totals.stored == 80, what="second wave")
            assert second.totals.stored > 0  # the newcomer took partitions and did work
        # The second consumer left: the first takes every partition back.
        kafka.produce(topic, waves[2])
        wait_until(lambda: first.totals.stored + second.totals.stored == 120, what="third wave")
    with books.engine.connect() as conn:
        cdr_ids = [row.cdr_id for row in conn.execute(select(models.cdrs.c.cdr_id))]
    assert sorted(cdr_ids) == sorted(c.cdr_id for wave in waves for c in wave)
    state = _books_state(books.engine)
    assert state[2] == expected_amount
    assert state[4] == expected_amount
    assert _committed(kafka, topic, group) == 120


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_database_outage_holds_batches_back_and_nothing_is_lost_or_doubled(database: Database, kafka: Kafka) -> None:
    books = make_books(database.engine)
    topic = kafka.new_topic(partitions=2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    waves = [_calls(10, MARCH), _calls(10, MARCH + timedelta(days=1))]
    with TcpProxy("127.0.0.1", 5432) as proxy:
        engine = make_engine(POSTGRES_URL.replace("127.0.0.1:5432", proxy.address), schema=database.schema)
        kafka.produce(topic, waves[0])
        with running(_consumer(engine, kafka, topic, group)) as consumer:
            wait_until(lambda: consumer.totals.stored == 10, what="first wave")
            proxy.cut()  # PostgreSQL unreachable: every connection reset
            kafka.produce(topic, waves[1])
            wait_until(lambda: consumer.last_error is not None, what="the consumer meeting the outage")
            assert consumer.totals.stored == 10
            proxy.restore()
            wait_until(lambda: consumer.totals.stored == 20, what="second wave after the outage")
        engine.dispose()
    state = _books_state(books.engine)
    assert state[0] == 20
    assert state[2] == sum(6 * (2 if c.duration_seconds > 60 else 1) + 5 for wave in waves for c in wave)
    assert _committed(kafka, topic, group, partitions=2) == 20


class _SlowConsumer(BillingConsumer):
    """Each transaction takes a while, so that rebalances come while a batch is in the store thread."""

    def _store(self, received: list[Any], rejected: list[Any]) -> Any:
        time.sleep(0.3)
        return super()._store(received, rejected)


def test_a_rebalance_while_a_batch_is_being_stored_loses_and_duplicates_nothing(books: Books, kafka: Kafka) -> None:
    topic = kafka.new_topic(partitions=4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    calls = _calls(120)
    kafka.produce(topic, calls)

    def slow(name: str) -> BillingConsumer:
        settings = BillingSettings(
            consumer_group=group,
            poll_timeout_ms=100,
            retry_seconds=0.2,
            batch_max_records=5,
            session_timeout_ms=SESSION_TIMEOUT_MS,
        )
        return _SlowConsumer(
            books.engine,
            bootstrap=kafka.bootstrap,
            topic=topic,
            dead_letter_topic=f"{topic}.dead",
            settings=settings,
            name=name,
        )

    first = slow("first")
    with running(first):
        wait_until(lambda: first.totals.stored > 0, what="the first batches")
        second = slow("second")
        with running(second):  # joins while the first has a batch in its store thread: a rebalance
            wait_until(lambda: first.totals.stored + second.totals.stored == 120, what="every CDR stored")
    assert second.totals.stored > 0
    with books.engine.connect() as conn:
        cdr_ids = sorted(row.cdr_id for row in conn.execute(select(models.cdrs.c.cdr_id)))
    assert cdr_ids == sorted(c.cdr_id for c in calls)
    expected = sum(6 * math.ceil(c.duration_seconds / 60) + 5 for c in calls)  # 6 a started minute, 5 set-up
    state = _books_state(books.engine)
    assert state[2] == expected and state[4] == expected  # the charges, and the usage booked
    # Offsets never run ahead of what is stored.  They may stop short: a batch whose offset commit raced
    # a member leaving goes to the partition's next owner, which finds its CDRs stored and changes nothing.
    assert _committed(kafka, topic, group) <= 120
    with running(slow("third")) as third:
        wait_until(lambda: _committed(kafka, topic, group) == 120, what="the group's offsets at the end")
    assert third.totals.stored == 0
    assert _books_state(books.engine) == state
