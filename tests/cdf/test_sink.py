"""The sinks' statements on SQLite and PostgreSQL, and the publisher's partition choice, without a broker."""

from __future__ import annotations

from sqlalchemy import insert, select

from cdf.models import outbox
from cdf.publisher import OutboxPublisher
from cdf.sink import SinkTiming, mark_rows, unmarked_rows
from charging.clock import SystemClock
from tests.conftest import Database


def fill(database: Database, count: int) -> list[int]:
    rows = [
        {
            "cdr_id": f"cdr-{n}",
            "partition_key": f"icid-{n}",
            "session_id": f"s{n}",
            "node_address": "pcscf.test",
            "payload": "{}",
            "created_at": 1.0,
        }
        for n in range(count)
    ]
    with database.engine.begin() as conn:
        conn.execute(insert(outbox), rows)
        return [r[0] for r in conn.execute(select(outbox.c.id).order_by(outbox.c.id))]


def test_marks_set_exactly_the_rows_given_however_scattered(database: Database) -> None:
    ids = fill(database, 1000)
    chosen = ids[:300] + ids[301:302] + ids[400:900:2]  # a run, a gap, then 250 runs of one
    with database.engine.begin() as conn:
        mark_rows(conn, "published_at", chosen, 5.0)
    with database.engine.connect() as conn:
        marked = [r[0] for r in conn.execute(select(outbox.c.id).where(outbox.c.published_at == 5.0))]
        left = unmarked_rows(conn, "published_at", 2000)
        other = unmarked_rows(conn, "jsonl_written_at", 10)
    assert sorted(marked) == sorted(chosen)
    assert [row.id for row in left] == [i for i in ids if i not in set(chosen)]
    assert left[0].cdr_id == "cdr-300" and left[0].partition_key == "icid-300" and left[0].payload == "{}"
    assert [row.id for row in other] == ids[:10]  # in outbox order, up to the limit


def test_the_publisher_picks_the_partition_kafka_pythons_default_partitioner_picks() -> None:
    from kafka.partitioner.default import DefaultPartitioner

    class Cluster:
        def topics(self) -> set[str]:
            return {"t"}

        def partitions_for_topic(self, topic: str) -> set[int]:
            return {0, 1, 2, 3, 4, 5}

        def available_partitions_for_topic(self, topic: str) -> set[int]:
            return {0, 1, 2, 3, 4, 5}

    publisher = OutboxPublisher(
        lambda fn: None,
        bootstrap="127.0.0.1:1",
        topic="t",
        partitions=6,
        owner="o",
        clock=SystemClock(),
        timing=SinkTiming(),
    )
    publisher._partitions = [0, 1, 2, 3, 4, 5]
    default = DefaultPartitioner()
    keys = [f"icid-{n}@pcscf{n % 7}.example.net".encode() for n in range(500)] + [b"", b"x", "é".encode()]
    for key in keys + keys:  # the second time from memory
        assert publisher._partition(key) == default.partition("t", key, key, None, None, Cluster())
