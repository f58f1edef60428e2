"""The billing consumer: CDRs from Kafka into the books, exactly once in effect.

One kafka-python consumer in a consumer group, in a thread of its own, and a store thread beside it.
Each batch goes through:

1. poll (at most ``batch_max_records``);
2. parse: CDRs on one side, poison messages (not UTF-8/JSON, unknown schema version,
   invalid or impossible values) with their reason on the other;
3. one database transaction, in the store thread: dead letters, CDRs (ON CONFLICT (cdr_id)
   DO NOTHING), the charges, usage and invoice lines of the CDRs that transaction inserted;
4. copy new dead letters to the dead-letter topic (the table is their outbox);
5. commit the batch's offsets to Kafka, after the database commit.

While the store thread runs step 3 for one batch, the consumer thread polls and parses the next
(steps 1-2); it commits the first batch's offsets (5) only once its transaction has committed, and
hands the next batch over only then, so at most one batch is in the store thread at any time.

A crash between 3 and 5 redelivers the batch, and step 3 then inserts nothing, so nothing
is charged twice.  A rebalance cannot lose or duplicate work either: rebalances happen inside
``poll``, and the rebalance listener first waits for the batch in the store thread.  Its offsets
are then committed only for the partitions this consumer kept; partitions that moved go to their
next owner from the last committed offset, who gets those CDRs again and skips them.  A database
that refuses a batch leaves it uncommitted: the consumer seeks back (the batch it polled
meanwhile too) and tries again later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kafka import ConsumerRebalanceListener
from sqlalchemy import Engine, exc, update

from billing import models
from billing.catalog import PlanBook
from billing.ingest import (
    BatchOutcome,
    Incoming,
    PoisonMessage,
    Received,
    Rejected,
    parse,
    store_batch,
    unpublished_dead_letters,
)
from billing.settings import BillingSettings
from charging.broker import consumer_config, producer_config
from charging.clock import Clock, SystemClock, utc
from charging.db import WriterTurn, unavailable
from charging.metrics import Registry

log = logging.getLogger("charging.billing")

FeedListener = Callable[[list[dict[str, Any]]], None]
_RATE_WINDOW_SECONDS = 10.0
_DEAD_LETTER_CHUNK = 500  # dead letters copied to their topic per attempt
_DEAD_LETTER_LOOK_SECONDS = 5.0  # between looks for dead letters left unpublished, when nothing new came


def _transient(error: BaseException) -> bool:
    """Whether trying the same batch again later can succeed (outage, deadlock, lock timeout)."""
    if isinstance(error, exc.SQLAlchemyError) and unavailable(error):
        return True
    if isinstance(error, exc.DBAPIError):
        code = getattr(error.orig, "sqlstate", None)
        return code in ("40001", "40P01", "55P03")  # serialization failure, deadlock, lock not available
    return False


@dataclass(slots=True)
class Batch:
    received: list[Received | Incoming] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    first_offsets: dict[Any, int] = field(default_factory=dict)  # TopicPartition -> first offset polled
    next_offsets: dict[Any, int] = field(default_factory=dict)  # TopicPartition -> offset to commit

    @property
    def size(self) -> int:
        return len(self.received) + len(self.rejected)


@dataclass(slots=True)
class _Flight:
    """A batch whose transaction runs in the store thread while the consumer thread polls the next."""

    batch: Batch
    result: Future[BatchOutcome | None]
    kept: set[Any] | None = None  # after a rebalance: its partitions this consumer owned throughout


def _outcome(flight: _Flight) -> BatchOutcome | None:
    """The flight's outcome once its transaction is over; None when refused (or the thread failed)."""
    try:
        return flight.result.result()
    except Exception:  # _store_or_refuse catches what it can: anything else counts as refused
        log.exception("billing store thread failed")
        return None


class _Rebalances(ConsumerRebalanceListener):  # type: ignore[misc]
    """Logs assignment changes, and lets no batch in the store thread outlive the assignment it was
    polled under unnoticed (see the module doc).  Runs on kafka-python's IO thread: it may wait for
    the store thread, never commit (that would wait for the IO thread itself)."""

    def __init__(self, owner: BillingConsumer) -> None:
        self.owner = owner
        self.revoked: set[Any] = set()

    def on_partitions_revoked(self, revoked: Any) -> None:
        log.info("billing consumer %s: partitions revoked: %s", self.owner.name, sorted(p.partition for p in revoked))
        self.owner.assigned = set()
        self.revoked = set(revoked)
        self.owner._wait_for_flight()

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("billing consumer %s: partitions assigned: %s", self.owner.name, sorted(p.partition for p in assigned))
        self.owner.assigned = {p.partition for p in assigned}
        # kafka-python keeps the position of a partition revoked and assigned again in one (eager) rebalance.
        self.owner._flight_kept(self.revoked & set(assigned))
        self.revoked = set()
        self.owner.joined.set()

    def on_partitions_lost(self, lost: Any) -> None:
        log.info("billing consumer %s: partitions lost: %s", self.owner.name, sorted(p.partition for p in lost))
        self.owner.assigned = set()
        self.revoked = set()
        self.owner._wait_for_flight()
        self.owner._flight_kept(set())


class BillingConsumer:
    def __init__(
        self,
        engine: Engine,
        *,
        bootstrap: str,
        topic: str,
        dead_letter_topic: str,
        settings: BillingSettings | None = None,
        clock: Clock | None = None,
        metrics: Registry | None = None,
        name: str = "billing",
        on_stored: FeedListener | None = None,
    ) -> None:
        self.engine = engine
        self.bootstrap = bootstrap
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.settings = settings or BillingSettings()
        self.clock = clock or SystemClock()
        self.name = name
        self.on_stored = on_stored
        self.plan_book = PlanBook()
        self.assigned: set[int] = set()
        self.joined = threading.Event()
        self.totals = BatchOutcome()  # running sums of every batch this consumer stored
        self.last_error: str | None = None
        self._consumer: Any = None
        self._producer: Any = None
        self._recent: deque[tuple[float, int]] = deque()
        self._flight: _Flight | None = None  # the batch in the store thread
        self._store_thread: ThreadPoolExecutor | None = None
        self._turn = WriterTurn(engine)  # on SQLite, the CDF's and the OCF's writers may share the file
        self._dead_letters_due = 0.0  # monotonic time of the next look for unpublished dead letters
        registry = metrics or Registry()
        self._consumed = registry.counter(
            "billing_cdrs_consumed_total", "CDR messages consumed, by outcome", ["outcome"]
        )
        self._batch_seconds = registry.histogram("billing_batch_seconds", "Time to store and rate one batch")
        self._lag = registry.gauge(
            "billing_consumer_lag", "Messages behind the end of each assigned partition", ["partition"]
        )
        registry.gauge("billing_consume_rate", "CDR messages consumed per second (last 10 s)", read=self.rate)

    # -- lifecycle ------------------------------------------------------------------------------------

    def open(self) -> None:
        from kafka import KafkaConsumer

        config = consumer_config(
            self.bootstrap,
            self.settings.consumer_group,
            client_id=f"{self.name}",
            session_timeout_ms=self.settings.session_timeout_ms,
            max_poll_interval_ms=self.settings.max_poll_interval_ms,
            max_poll_records=self.settings.batch_max_records,
        )
        self._consumer = KafkaConsumer(**config)
        self._consumer.subscribe([self.topic], listener=_Rebalances(self))

    def close(self, commit: bool = True) -> None:
        """Leave the group.  ``commit=False`` leaves without committing anything more (a crash, for tests)."""
        if self._consumer is not None:
            if commit:
                self.flush()
            self._consumer.close(autocommit=commit)
            self._consumer = None
        if self._store_thread is not None:
            self._store_thread.shutdown(wait=True)
            self._store_thread = None
        self._turn.close()
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; errors are logged and retried, never end the loop."""
        if self._consumer is None:
            self.open()
        while not stop.is_set():
            try:
                self.run_once()
            except Exception as error:  # keep consuming: the batch was not committed and comes again
                self.last_error = str(error)
                log.exception("billing consumer %s: round failed; retrying", self.name)
                stop.wait(self.settings.retry_seconds)
        try:
            self.flush()  # the last batch's offsets
        except Exception:
            log.exception("billing consumer %s: the last batch was not settled; it will be redelivered", self.name)

    # -- one round ------------------------------------------------------------------------------------

    def run_once(self) -> BatchOutcome | None:
        """Poll and parse a batch while the previous one is stored; settle that one (its offsets, dead
        letters, feed), then hand the new one to the store thread.  Returns the settled batch's outcome."""
        batch = self.poll_batch()
        outcome = self._settle(batch)
        if batch.size:
            if self._store_thread is None:
                self._store_thread = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-store")
            self._flight = _Flight(batch, self._store_thread.submit(self._store_or_refuse, batch))
        elif time.monotonic() >= self._dead_letters_due:
            self.publish_dead_letters()
        return outcome

    def flush(self) -> BatchOutcome | None:
        """Settle the batch in the store thread, if any: wait for its transaction, commit its offsets."""
        return self._settle(None)

    def _settle(self, polled: Batch | None) -> BatchOutcome | None:
        """Finish the batch in the store thread: commit its offsets after its transaction did, or, if the
        database refused it, seek back to it (and to ``polled``, which is then dropped) and wait."""
        flight = self._flight
        if flight is None:
            return None
        self._flight = None
        outcome = _outcome(flight)
        if outcome is None:
            self._take_again(flight, polled)
            time.sleep(self.settings.retry_seconds)
            return None
        if outcome.dead_letters or time.monotonic() >= self._dead_letters_due:
            self.publish_dead_letters()
        if not self.commit(flight.batch, only=flight.kept):
            # Stored, but the offsets did not stick (a rebalance was under way).  Where this consumer keeps
            # the partitions it stands past the batch and would never commit it: take it again, so that it
            # is skipped as stored and its offsets are committed then.
            self._take_again(flight, polled)
        self._notify(outcome)
        return outcome

    def _take_again(self, flight: _Flight, polled: Batch | None) -> None:
        """Seek back to the batch in flight, and to ``polled`` (which is then dropped), so the next polls
        deliver both again."""
        if polled is not None and polled.size:
            self._rewind(polled.first_offsets)
            polled.received.clear()
            polled.rejected.clear()
        # After a rebalance only the partitions kept throughout still stand where this batch left
        # them; the others start again from their committed offsets.
        kept = flight.kept
        first = flight.batch.first_offsets
        self._rewind({tp: offset for tp, offset in first.items() if kept is None or tp in kept})

    def _wait_for_flight(self) -> None:
        """For the rebalance listener: the batch in the store thread is done when this returns."""
        if self._flight is not None:
            _outcome(self._flight)

    def _flight_kept(self, kept: set[Any]) -> None:
        """For the rebalance listener: after a rebalance, the batch in the store thread is settled only
        on the partitions this consumer kept throughout (its offsets, or seeking back to it)."""
        flight = self._flight
        if flight is not None:
            flight.kept = kept if flight.kept is None else flight.kept & kept

    def _rewind(self, offsets: dict[Any, int]) -> None:
        assigned = self._consumer.assignment()
        for partition, offset in offsets.items():
            if partition in assigned:
                self._consumer.seek(partition, offset)

    def poll_batch(self) -> Batch:
        records = self._consumer.poll(
            timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.batch_max_records
        )
        batch = Batch()
        # Only offsets, keys and values are kept: kafka-python's record objects (and their header lists)
        # go before parsing, rather than outliving a batch's worth of garbage collections.
        polled = []
        for partition, messages in records.items():
            if messages:
                batch.first_offsets[partition] = messages[0].offset
                batch.next_offsets[partition] = messages[-1].offset + 1
                polled.append((partition, [(m.offset, m.key, m.value) for m in messages]))
        del records
        for partition, messages in polled:
            for offset, key, value in messages:
                if value is None:
                    value = b""
                try:
                    cdr, usage = parse(value)
                except PoisonMessage as poison:
                    log.warning(
                        "dead letter at %s/%d@%d: %s",
                        partition.topic,
                        partition.partition,
                        offset,
                        poison,
                        extra={"cdr_id": None, "icid": key.decode("utf-8", "replace") if key else None},
                    )
                    batch.rejected.append(
                        Rejected(partition.topic, partition.partition, offset, key, value, str(poison))
                    )
                    continue
                batch.received.append(Incoming.of(cdr, usage, value.decode("utf-8"), partition.partition, offset))
        self._update_lag()
        return batch

    def store(self, batch: Batch) -> BatchOutcome | None:
        """One transaction for the batch, in the calling thread.  When the database refuses it (outage,
        deadlock), the consumer seeks back to the batch's first offsets, so the next poll delivers it
        again, and returns None."""
        outcome = self._store_or_refuse(batch)
        if outcome is None:
            self._rewind(batch.first_offsets)
            time.sleep(self.settings.retry_seconds)
        return outcome

    def _store_or_refuse(self, batch: Batch) -> BatchOutcome | None:
        """The batch's transaction; None when the database refused it (nothing of it is stored then)."""
        started = time.monotonic()
        try:
            try:
                outcome = self._store(batch.received, batch.rejected)
            except Exception as error:
                if _transient(error):
                    raise
                outcome = self._store_one_by_one(batch)
        except Exception as error:
            self.last_error = str(error)
            log.warning("billing consumer %s: database refused a batch (%s); will retry", self.name, error)
            return None
        self._batch_seconds.observe(time.monotonic() - started)
        self._count(outcome, batch.size)
        self.last_error = None
        return outcome

    def _store(self, received: list[Received | Incoming], rejected: list[Rejected]) -> BatchOutcome:
        with self._turn.begin() as conn:
            return store_batch(
                conn,
                received,
                rejected,
                now=utc(self.clock.now()),
                plan_book=self.plan_book,
                feed=self.on_stored is not None,
            )

    def _store_one_by_one(self, batch: Batch) -> BatchOutcome:
        """A batch failed for a reason other than an outage: find the CDRs that cannot be stored and
        dead-letter them, so one bad record never holds up its partition."""
        total = BatchOutcome()
        for item in batch.received:
            try:
                one = self._store([item], [])
            except Exception as error:
                if _transient(error):
                    raise
                log.error(
                    "CDR cannot be stored: %s",
                    error,
                    extra={"cdr_id": item.cdr.cdr_id, "icid": item.cdr.ims_charging_identifier},
                )
                reason = f"cannot be stored: {type(error).__name__}: {error}"[:2000]
                payload = item.payload.encode()
                key = (item.cdr.partition_key or "").encode()
                one = self._store(
                    [], [Rejected(self.topic, item.partition or 0, item.offset or 0, key, payload, reason)]
                )
            _add(total, one)
        if batch.rejected:
            _add(total, self._store([], batch.rejected))
        return total

    def commit(self, batch: Batch, only: set[Any] | None = None) -> bool:
        """Commit the batch's offsets (``only`` on those partitions); False when a rebalance took the
        partitions meanwhile."""
        from kafka.errors import CommitFailedError, KafkaError
        from kafka.structs import OffsetAndMetadata

        offsets = {
            tp: OffsetAndMetadata(offset, "", -1)
            for tp, offset in batch.next_offsets.items()
            if only is None or tp in only
        }
        if not offsets:
            return True
        try:
            self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as error:
            # Stored already; whoever gets these partitions next receives the batch again and skips it.
            log.warning(
                "billing consumer %s: offset commit failed (%s); the batch will be taken again", self.name, error
            )
            return False
        return True

    def publish_dead_letters(self) -> int:
        """Copy dead letters not yet on the dead-letter topic there; those that fail stay for next time.

        The consumer calls this after each batch that added dead letters, and otherwise every
        ``_DEAD_LETTER_LOOK_SECONDS`` (for those an earlier attempt or another instance left), or after
        ``retry_seconds`` when an attempt failed.
        """
        self._dead_letters_due = time.monotonic() + self.settings.retry_seconds
        try:
            with self.engine.connect() as conn:
                pending = unpublished_dead_letters(conn, _DEAD_LETTER_CHUNK)
        except exc.SQLAlchemyError as error:
            log.warning("dead letters not readable now (%s); they are published later", error)
            return 0
        if not pending:
            self._dead_letters_due = time.monotonic() + _DEAD_LETTER_LOOK_SECONDS
            return 0
        try:
            if self._producer is None:
                from kafka import KafkaProducer

                self._producer = KafkaProducer(**producer_config(self.bootstrap, delivery_timeout_ms=30_000))
            futures = [
                self._producer.send(
                    self.dead_letter_topic,
                    key=row.message_key,
                    value=row.payload,
                    headers=[
                        ("reason", row.reason.encode()),
                        ("source", f"{row.topic}/{row.kafka_partition}@{row.kafka_offset}".encode()),
                    ],
                )
                for row in pending
            ]
            self._producer.flush(timeout=30)
            for future in futures:
                future.get(timeout=1)
        except Exception as error:
            log.warning("dead-letter topic unreachable (%s); %d dead letters wait in the table", error, len(pending))
            return 0
        table = models.dead_letters
        try:
            with self.engine.begin() as conn:
                conn.execute(update(table).where(table.c.id.in_([row.id for row in pending])).values(published=True))
        except exc.SQLAlchemyError as error:  # they are on the topic; at worst they go there once more
            log.warning("dead letters published but not marked (%s)", error)
            return 0
        if len(pending) < _DEAD_LETTER_CHUNK:
            self._dead_letters_due = time.monotonic() + _DEAD_LETTER_LOOK_SECONDS
        return len(pending)

    # -- figures --------------------------------------------------------------------------------------

    def rate(self) -> float:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - _RATE_WINDOW_SECONDS:
            self._recent.popleft()
        return sum(count for _, count in self._recent) / _RATE_WINDOW_SECONDS

    def _count(self, outcome: BatchOutcome, size: int) -> None:
        _add(self.totals, outcome, feed=False)
        self._consumed.inc("stored", amount=outcome.stored)
        self._consumed.inc("duplicate", amount=outcome.duplicates)
        self._consumed.inc("dead_letter", amount=outcome.dead_letters)
        self._consumed.inc("unassigned", amount=outcome.unassigned)
        self._recent.append((time.monotonic(), size))

    def _update_lag(self) -> None:
        consumer = self._consumer
        for partition in consumer.assignment():
            high = consumer.highwater(partition)
            if high is None:
                continue
            try:
                position = consumer.position(partition, timeout_ms=0)
            except Exception:
                continue
            if position is not None:
                self._lag.set(max(high - position, 0), str(partition.partition))

    def _notify(self, outcome: BatchOutcome) -> None:
        if self.on_stored is not None and outcome.feed:
            try:
                self.on_stored(outcome.feed)
            except Exception:
                log.exception("live feed listener failed")


def _add(total: BatchOutcome, one: BatchOutcome, feed: bool = True) -> None:
    total.stored += one.stored
    total.duplicates += one.duplicates
    total.unassigned += one.unassigned
    total.unrated += one.unrated
    total.dead_letters += one.dead_letters
    if feed:
        total.feed += one.feed
