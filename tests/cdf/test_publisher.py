"""The outbox publisher against a real Kafka-protocol broker (tansu via charging.broker): keys, order, outages."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from bench.messages import sdp_media
from cdf.models import outbox
from cdf.queries import backlog
from charging.broker import EmbeddedBroker, free_port
from charging.clock import SystemClock
from tests.cdf.harness import RunningCdf, ims_node, running_cdf, send_acr
from tests.cdf.kafka_support import cdrs_in, read_topic
from tests.conftest import Database
from tests.support.diameter import wait_until
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.kafka

TOPIC = "charging.cdrs"
FAST_SINK = {"publish_poll_seconds": 0.1, "publish_backoff_max_seconds": 0.5, "publish_timeout_seconds": 60.0}


@pytest.fixture
def proxied_broker() -> Iterator[tuple[EmbeddedBroker, TcpProxy]]:
    port = free_port()
    with TcpProxy("127.0.0.1", port) as proxy, EmbeddedBroker(port=port, advertised_port=proxy.port) as broker:
        yield broker, proxy


def unpublished(cdf: RunningCdf) -> int:
    with cdf.engine.connect() as conn:
        return int(backlog(conn, 0.0)["unpublished"])


async def call(
    node_host: str, cdf_node: object, n: int, icid: str, cdf_host: str = "cdf.test"
) -> list[tuple[str, str, int]]:
    """One three-ACR call of ``node_host``; returns the (session, host, number) of every ACR acknowledged."""
    from charging.diameter.node import DiameterNode

    assert isinstance(cdf_node, DiameterNode)
    session = f"{node_host};1;{n}"
    acked = []
    for number, kind in enumerate(["START", "INTERIM", "STOP"]):
        aca = await send_acr(
            cdf_node,
            cdf_host,
            session_id=session,
            record_type=kind,
            record_number=number,
            icid=icid,
            media=sdp_media(video=number == 1),
        )
        if aca["Result-Code"] == 2001:
            acked.append((session, node_host, number))
    return acked


async def test_cdrs_reach_kafka_keyed_by_icid_in_session_order_and_are_marked_published(
    database: Database, proxied_broker: tuple[EmbeddedBroker, TcpProxy]
) -> None:
    broker, _ = proxied_broker
    async with running_cdf(database.engine, clock=SystemClock(), bootstrap=broker.bootstrap, **FAST_SINK) as cdf:
        async with ims_node(cdf.port, "scscf.test") as scscf, ims_node(cdf.port, "as.test") as app_server:
            for n in range(5):
                await call("scscf.test", scscf, n, f"icid-{n}")
                await call("as.test", app_server, n, f"icid-{n}")
        await wait_until(lambda: unpublished(cdf) == 0, 20, "outbox published")
        with cdf.engine.connect() as conn:
            marked = [r[0] for r in conn.execute(select(outbox.c.published_at))]
    assert len(marked) == 20 and all(t is not None for t in marked)
    records = await asyncio.to_thread(read_topic, broker.bootstrap, TOPIC)
    assert len(records) == 20
    partitions_of_icid: dict[str, set[int]] = {}
    for record in records:
        cdr = cdrs_in([record])[0]
        assert record.key.decode() == cdr.ims_charging_identifier
        assert dict(record.headers)["cdr_id"].decode() == cdr.cdr_id
        partitions_of_icid.setdefault(cdr.ims_charging_identifier or "", set()).add(record.partition)
    assert all(len(p) == 1 for p in partitions_of_icid.values())
    for session in {c.session_id for c in cdrs_in(records)}:
        in_kafka = [c.record_sequence_number for c in cdrs_in(records) if c.session_id == session]
        assert in_kafka == [1, 2]


async def test_with_the_broker_cut_mid_load_acrs_are_answered_and_the_outbox_drains_on_return(
    database: Database, proxied_broker: tuple[EmbeddedBroker, TcpProxy]
) -> None:
    broker, proxy = proxied_broker
    calls = 30
    async with (
        running_cdf(database.engine, clock=SystemClock(), bootstrap=broker.bootstrap, **FAST_SINK) as cdf,
        ims_node(cdf.port, "pcscf.test") as pcscf,
    ):
        acked: list[tuple[str, str, int]] = []

        async def load(first: int, count: int) -> None:
            results = await asyncio.gather(
                *(call("pcscf.test", pcscf, n, f"icid-{n}") for n in range(first, first + count))
            )
            for result in results:
                acked.extend(result)

        await load(0, 10)
        proxy.cut()  # the first calls' CDRs may still be on their way to the broker
        await load(10, 10)
        # Every ACR was answered although nothing reaches the broker; the outbox holds the CDRs.
        assert len(acked) == 3 * 20
        assert unpublished(cdf) >= 2 * 10
        proxy.restore()
        await load(20, 10)
        await wait_until(lambda: unpublished(cdf) == 0, 30, "outbox drained after the broker came back")
    assert len(acked) == 3 * calls
    cdrs = cdrs_in(await asyncio.to_thread(read_topic, broker.bootstrap, TOPIC))
    copies = Counter(c.cdr_id for c in cdrs)
    assert [cdr_id for cdr_id, n in copies.items() if n > 1] == []
    in_cdrs = Counter((c.session_id, c.node_address, n) for c in cdrs for n in c.accounting_record_numbers)
    assert set(in_cdrs) == set(acked)
    assert all(n == 1 for n in in_cdrs.values())


async def test_two_instances_publish_each_cdr_once_even_when_given_one_node_id(
    database: Database, proxied_broker: tuple[EmbeddedBroker, TcpProxy]
) -> None:
    broker, _ = proxied_broker
    second_engine = database.new_engine()
    common = {"clock": SystemClock(), "bootstrap": broker.bootstrap, "node_id": "cdf-1", **FAST_SINK}
    try:
        async with (
            running_cdf(database.engine, host="cdf-a.test", **common) as cdf_a,  # type: ignore[arg-type]
            running_cdf(second_engine, host="cdf-b.test", **common) as cdf_b,  # type: ignore[arg-type]
            ims_node(cdf_a.port, "pcscf.test", cdf_host="cdf-a.test") as to_a,
            ims_node(cdf_b.port, "scscf.test", cdf_host="cdf-b.test") as to_b,
        ):
            await asyncio.gather(
                *(call("pcscf.test", to_a, n, f"icid-a{n}", "cdf-a.test") for n in range(10)),
                *(call("scscf.test", to_b, n, f"icid-b{n}", "cdf-b.test") for n in range(10)),
            )
            await wait_until(lambda: unpublished(cdf_a) == 0, 20, "outbox published")
    finally:
        second_engine.dispose()
    records = await asyncio.to_thread(read_topic, broker.bootstrap, TOPIC)
    assert len({c.cdr_id for c in cdrs_in(records)}) == 40
    assert len(records) == 40  # one publisher at a time: none sent twice
