"""Reading back what the CDF published: every record of a topic, from the beginning, with the broker's count."""

from __future__ import annotations

import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from charging.broker import consumer_config
from charging.cdr import Cdr


def read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Any]:
    """All records of ``topic`` as the broker holds them now (duplicates included), in partition order."""
    consumer = KafkaConsumer(**consumer_config(bootstrap, None))
    try:
        deadline = time.monotonic() + timeout
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {topic} has no partitions")
            time.sleep(0.1)
            partitions = consumer.partitions_for_topic(topic)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        expected = sum(consumer.end_offsets(assigned).values())
        records: list[Any] = []
        while len(records) < expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"read {len(records)} of {expected} records of {topic}")
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def cdrs_in(records: list[Any]) -> list[Cdr]:
    return [Cdr.from_json(r.value) for r in records]
