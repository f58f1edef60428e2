"""The outbox publisher: CDRs from the outbox to Kafka, marked published only once the broker acknowledged them.

kafka-python's idempotent producer with ``acks=all`` (settings from ``charging.broker.producer_config``);
key = ICID (else Session-Id), so that one session's CDRs keep their order on one partition; value = the
CDR's JSON; headers ``cdr_id`` and ``schema_version``.  The partition is the one kafka-python's default
partitioner would pick (murmur2 of the key), computed here and remembered per key.  Rows go out in outbox
order, one lease holder for the whole cluster.  While the broker is away rounds fail and back off, the
outbox grows, and the first round after its return drains it.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Column

from cdf.models import outbox
from cdf.sink import OutboxRow, OutboxSink, RunWrite, SinkTiming
from charging.broker import create_topic, producer_config
from charging.cdr import SCHEMA_VERSION
from charging.clock import Clock

log = logging.getLogger("charging.cdf")


class OutboxPublisher(OutboxSink):
    lease_name = "publisher"
    column: Column[Any] = outbox.c.published_at

    def __init__(
        self,
        run_write: RunWrite[Any],
        *,
        bootstrap: str,
        topic: str,
        partitions: int,
        owner: str,
        clock: Clock,
        timing: SinkTiming,
        delivery_timeout: float = 30.0,
        producer_overrides: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(run_write, owner=owner, clock=clock, timing=timing)
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.delivery_timeout = delivery_timeout
        self.producer_overrides = producer_overrides or {}
        self._producer: Any = None
        self._headers = [("schema_version", str(SCHEMA_VERSION).encode())]
        self._partitions: list[int] = []  # the topic's, as the producer's metadata last said
        self._partition_of: dict[bytes, int] = {}  # key -> partition, for those partitions

    def _ensure_producer(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer

            create_topic(self.bootstrap, self.topic, self.partitions, exist_ok=True, timeout=10.0)
            timeout_ms = int(self.delivery_timeout * 1000)
            config = producer_config(
                self.bootstrap,
                client_id=f"cdf-{self.owner}",
                linger_ms=20,  # a round sends hundreds of CDRs: fill batches rather than send each
                batch_size=1 << 20,
                delivery_timeout_ms=timeout_ms,
                request_timeout_ms=min(10_000, timeout_ms // 2),
                max_block_ms=min(10_000, timeout_ms),
                **self.producer_overrides,
            )
            self._producer = KafkaProducer(**config)
            log.info("CDR publisher connected to %s, topic %s", self.bootstrap, self.topic)
        return self._producer

    def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception as exc:  # closing a broken producer must not stop the sink
                log.debug("closing the Kafka producer: %s", exc)

    def deliver(self, rows: list[OutboxRow]) -> tuple[list[int], BaseException | None]:
        from kafka.errors import KafkaError, KafkaTimeoutError

        producer = self._ensure_producer()
        futures = []
        error: BaseException | None = None
        try:
            partitions = sorted(producer.partitions_for(self.topic))
        except KafkaError as exc:  # no metadata while the broker is away
            partitions, error = [], exc
        if partitions != self._partitions:
            self._partitions = partitions
            self._partition_of.clear()
        for row in rows if error is None else ():
            key = row.partition_key.encode()
            try:
                futures.append(
                    producer.send(
                        self.topic,
                        key=key,
                        value=row.payload.encode(),
                        headers=[("cdr_id", row.cdr_id.encode()), *self._headers],
                        partition=self._partition(key),
                    )
                )
            except KafkaError as exc:
                error = exc
                break
        try:
            # Every send resolves within the delivery timeout: wait for all, so none is still in flight when
            # its row is read again.
            producer.flush(timeout=self.delivery_timeout + 5)
        except KafkaError as exc:
            error = error or exc
        delivered: list[int] = []
        for row, future in zip(rows, futures, strict=False):
            if future.succeeded():
                delivered.append(row.id)
            elif error is None:
                error = future.exception or KafkaTimeoutError("no acknowledgement")
        if error is not None:
            self._drop_producer()  # start the next round with a fresh connection and producer id
        return delivered, error

    def _partition(self, key: bytes) -> int:
        """The partition kafka-python's default partitioner picks for ``key`` (murmur2, as the Java client),
        remembered: one ICID's CDRs (every node's, every partial) come close together, and the pure-Python
        hash is a third of the cost of a send."""
        found = self._partition_of.get(key)
        if found is None:
            from kafka.partitioner.default import murmur2

            if len(self._partition_of) >= 100_000:
                self._partition_of.clear()
            found = self._partitions[(murmur2(key) & 0x7FFFFFFF) % len(self._partitions)]
            self._partition_of[key] = found
        return found

    def on_stop(self) -> None:
        self._drop_producer()
