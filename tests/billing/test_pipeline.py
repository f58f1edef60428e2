"""The consumer's two threads: a batch's transaction runs in the store thread while the next batch is
polled; its offsets are committed only after that transaction, a refused batch is polled again (with the
one polled meanwhile), and after a rebalance only the partitions kept throughout are committed or rewound.

Real parts: SQLite and PostgreSQL (the ``database`` fixture); the Kafka consumer is a stand-in that
records seeks and commits, so every interleaving here is deterministic (the real broker's rebalances
are in test_consumer.py).
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import CommitFailedError
from sqlalchemy import exc, select

from billing import models
from billing.consumer import Batch, BillingConsumer, _Rebalances
from billing.ingest import Incoming, Received, parse
from billing.settings import BillingSettings
from charging.cdr import Cdr
from tests.billing.conftest import make_books
from tests.billing.factories import make_cdr
from tests.conftest import Database

MARCH = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
P0, P1, P2 = (TopicPartition("cdrs", n) for n in range(3))


class StandInKafka:
    """The calls BillingConsumer makes on its KafkaConsumer, with batches to hand out and a record of
    every seek and commit (in the order they happened, with how many transactions had committed)."""

    def __init__(self, owner: BillingConsumer, batches: list[dict[TopicPartition, list[Cdr]]]) -> None:
        self.owner = owner
        self.batches = deque(batches)
        self.assigned = {P0, P1, P2}
        self.positions: dict[TopicPartition, int] = {}
        self.log: list[tuple[str, Any]] = []
        self.listener: _Rebalances | None = None
        self.rebalance_before_next_poll: tuple[set[TopicPartition], set[TopicPartition]] | None = None
        self.refused_commits = 0  # how many commits to come fail as during a rebalance

    # -- KafkaConsumer ------------------------------------------------------------------------------------

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        if self.rebalance_before_next_poll is not None:
            revoked, assigned = self.rebalance_before_next_poll
            self.rebalance_before_next_poll = None
            assert self.listener is not None
            self.listener.on_partitions_revoked(revoked)
            self.assigned = set(assigned)
            self.listener.on_partitions_assigned(assigned)
        if not self.batches:
            return {}
        records: dict[TopicPartition, list[Any]] = {}
        for partition, cdrs in self.batches.popleft().items():
            start = self.positions.get(partition, 0)
            records[partition] = [_Message(start + i, cdr) for i, cdr in enumerate(cdrs)]
            self.positions[partition] = start + len(cdrs)
        return records

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        assert partition in self.assigned
        self.positions[partition] = offset
        self.log.append(("seek", (partition.partition, offset)))

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        if self.refused_commits:
            self.refused_commits -= 1
            self.log.append(("commit refused", {tp.partition: meta.offset for tp, meta in offsets.items()}))
            raise CommitFailedError("injected: the group is rebalancing")
        stored = self.owner.totals.stored
        self.log.append(("commit", ({tp.partition: meta.offset for tp, meta in offsets.items()}, stored)))

    def highwater(self, partition: TopicPartition) -> None:
        return None

    def close(self, autocommit: bool = True) -> None:
        pass


class _Message:
    def __init__(self, offset: int, cdr: Cdr) -> None:
        self.offset = offset
        self.key = cdr.partition_key.encode()
        self.value = cdr.to_json()


class FlakyConsumer(BillingConsumer):
    """Refuses the transactions named in ``refuse`` (by count) as an unreachable database would."""

    def __init__(self, *args: Any, refuse: set[int] = frozenset(), **kwargs: Any) -> None:  # type: ignore[assignment]
        super().__init__(*args, **kwargs)
        self.refuse = set(refuse)
        self.transactions = 0

    def _store(self, received: list[Received | Incoming], rejected: list[Any]) -> Any:
        self.transactions += 1
        if self.transactions in self.refuse:
            raise exc.OperationalError("INSERT", {}, ConnectionError("injected: database unreachable"))
        return super()._store(received, rejected)


def _consumer(database: Database, batches: list[dict[TopicPartition, list[Cdr]]], **kwargs: Any) -> Any:
    consumer = FlakyConsumer(
        database.engine,
        bootstrap="unused:9092",
        topic="cdrs",
        dead_letter_topic="dead",
        settings=BillingSettings(retry_seconds=0.01),
        **kwargs,
    )
    kafka = StandInKafka(consumer, batches)
    kafka.listener = _Rebalances(consumer)
    consumer._consumer = kafka
    consumer._dead_letters_due = float("inf")  # no dead letters here; keeps the broker out
    return consumer, kafka


def _calls(count: int, day: int = 0) -> list[Cdr]:
    return [make_cdr(start=MARCH + timedelta(days=day, minutes=i), duration=60) for i in range(count)]


def _stored_ids(database: Database) -> list[str]:
    with database.engine.connect() as conn:
        return sorted(conn.execute(select(models.cdrs.c.cdr_id)).scalars())


def test_offsets_are_committed_after_the_transaction_of_their_batch_while_the_next_is_polled(
    database: Database,
) -> None:
    make_books(database.engine)
    first, second = _calls(3), _calls(2, day=1)
    consumer, kafka = _consumer(database, [{P0: first[:2], P1: first[2:]}, {P0: second}])
    try:
        assert consumer.run_once() is None  # polled and handed over; nothing settled yet
        assert kafka.log == []
        settled = consumer.run_once()  # polls the second batch, then settles the first
        assert settled is not None and settled.stored == 3
        assert kafka.log == [("commit", ({0: 2, 1: 1}, 3))]
        consumer.flush()
        assert kafka.log[-1] == ("commit", ({0: 4}, 5))
    finally:
        consumer.close()
    assert _stored_ids(database) == sorted(c.cdr_id for c in first + second)


def test_a_refused_batch_and_the_one_polled_meanwhile_are_polled_again_and_stored_once(database: Database) -> None:
    books = make_books(database.engine)
    first, second = _calls(3), _calls(3, day=1)
    consumer, kafka = _consumer(
        database, [{P0: first[:2], P1: first[2:]}, {P0: second[:1], P2: second[1:]}], refuse={1}
    )
    try:
        consumer.run_once()
        assert consumer.run_once() is None  # the first transaction was refused: both batches go back
        assert ("seek", (0, 0)) in kafka.log and ("seek", (1, 0)) in kafka.log and ("seek", (2, 0)) in kafka.log
        assert not any(kind == "commit" for kind, _ in kafka.log)
        # The stand-in delivers what it was told next: the same records again, from where the seeks put it.
        kafka.batches.extend([{P0: first[:2] + second[:1], P1: first[2:], P2: second[1:]}])
        kafka.positions = {P0: 0, P1: 0, P2: 0}
        consumer.run_once()
        consumer.flush()
    finally:
        consumer.close()
    assert kafka.log[-1] == ("commit", ({0: 3, 1: 1, 2: 2}, 6))
    assert _stored_ids(database) == sorted(c.cdr_id for c in first + second)
    assert books.total(models.invoice_lines.c.cdr_count) == 6


def test_after_a_rebalance_only_the_partitions_kept_throughout_are_committed(database: Database) -> None:
    make_books(database.engine)
    first = _calls(4)
    consumer, kafka = _consumer(database, [{P0: first[:2], P1: first[2:]}])
    try:
        consumer.run_once()  # the batch goes to the store thread
        # A rebalance during the next poll: P1 moves to another consumer, P0 stays.
        kafka.rebalance_before_next_poll = ({P0, P1, P2}, {P0, P2})
        settled = consumer.run_once()
    finally:
        consumer.close()
    assert settled is not None and settled.stored == 4  # stored all the same: P1's next owner skips them
    assert kafka.log == [("commit", ({0: 2}, 4))]


def test_after_a_rebalance_a_refused_batch_is_polled_again_on_the_partitions_kept(database: Database) -> None:
    make_books(database.engine)
    first = _calls(4)
    consumer, kafka = _consumer(database, [{P0: first[:2], P1: first[2:]}], refuse={1})
    try:
        consumer.run_once()
        kafka.rebalance_before_next_poll = ({P0, P1, P2}, {P0, P2})
        assert consumer.run_once() is None
    finally:
        consumer.close()
    # P0 goes back to the batch's first offset; P1 is someone else's now (it starts from its committed offset).
    assert kafka.log == [("seek", (0, 0))]
    assert _stored_ids(database) == []


def test_a_stored_batch_whose_offset_commit_failed_is_taken_again_and_then_committed(database: Database) -> None:
    books = make_books(database.engine)
    first, second = _calls(3), _calls(2, day=1)
    consumer, kafka = _consumer(database, [{P0: first[:2], P1: first[2:]}, {P0: second}])
    kafka.refused_commits = 1
    try:
        consumer.run_once()
        settled = consumer.run_once()  # stores the first batch; its offset commit fails
        assert settled is not None and settled.stored == 3
        # Both batches go back: the first to have its offsets committed, the second (polled meanwhile) after it.
        assert kafka.log == [("commit refused", {0: 2, 1: 1}), ("seek", (0, 2)), ("seek", (0, 0)), ("seek", (1, 0))]
        kafka.batches.extend([{P0: first[:2] + second, P1: first[2:]}])
        kafka.positions = {P0: 0, P1: 0}
        again = consumer.run_once()
        consumer.flush()
    finally:
        consumer.close()
    assert kafka.log[-1] == ("commit", ({0: 4, 1: 1}, 5))
    assert again is None or again.stored == 0
    assert _stored_ids(database) == sorted(c.cdr_id for c in first + second)
    assert books.total(models.invoice_lines.c.cdr_count) == 5  # the first batch, taken twice, booked once


def test_a_consumer_stops_only_after_committing_the_batch_it_has_in_flight(database: Database) -> None:
    make_books(database.engine)
    consumer, kafka = _consumer(database, [{P0: _calls(2)}])
    consumer.run_once()
    consumer.close()
    assert kafka.log == [("commit", ({0: 2}, 2))]


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_the_consumer_keeps_flat_records_and_stores_what_the_models_give(database: Database) -> None:
    """The consumer keeps an ``Incoming`` per CDR (no models); storing it gives what storing the ``Cdr`` does."""
    cdr = make_cdr(start=MARCH, duration=61, iois=("home.net", "other.net"), sequence=1)
    model, usage = parse(cdr.to_json())
    incoming = Incoming.of(model, usage, cdr.to_json().decode(), 3, 7)
    assert incoming.cdr is incoming and incoming.usage == usage
    assert incoming.record_opening_time == cdr.record_opening_time
    assert incoming.record_opening_time.tzinfo is UTC
    assert [(p.originating_ioi, p.terminating_ioi) for p in incoming.inter_operator_identifiers] == [
        ("home.net", "other.net")
    ]
    assert (incoming.partition_key, incoming.record_type) == (cdr.partition_key, "sCSCFRecord")
    batch = Batch(received=[incoming])
    consumer, _ = _consumer(database, [], on_stored=lambda items: None)  # a listener: the feed is built
    make_books(database.engine)
    outcome = consumer.store(batch)
    consumer.close()
    assert outcome is not None and outcome.stored == 1
    assert outcome.feed[0]["started_at"] == cdr.service_delivery_start_time_stamp.isoformat()  # type: ignore[union-attr]
    with database.engine.connect() as conn:
        row = conn.execute(select(models.cdrs)).one()
    assert (row.kafka_partition, row.kafka_offset, row.amount_minor, row.service) == (3, 7, 12 + 5, "voice")
