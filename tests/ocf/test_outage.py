"""A database out of reach: CCRs get DIAMETER_TOO_BUSY (the client applies its failure handling), nothing is lost,
and the OCF serves again by itself once the database is back (PostgreSQL behind a TCP proxy that the test cuts)."""

from __future__ import annotations

import pytest

from charging.clock import ManualClock
from charging.db import make_engine
from charging.diameter.constants import ResultCode
from tests.conftest import POSTGRES_URL, Database
from tests.ocf.conftest import CLIENT_HOST, OCF_HOST, Ocf, mscc, short_settings, start_ocf
from tests.support.diameter import client_node, wait_available
from tests.support.tcpproxy import TcpProxy


async def test_database_outage_answers_too_busy_and_recovers(database: Database) -> None:
    if database.kind != "postgresql":
        pytest.skip("the outage is made by cutting the PostgreSQL connection")
    host_port = POSTGRES_URL.rsplit("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    with TcpProxy(host, int(port)) as proxy:
        url = POSTGRES_URL.replace(host_port, f"127.0.0.1:{proxy.port}")
        clock = ManualClock()
        service = start_ocf(make_engine(url, schema=database.schema), short_settings(), clock)
        await service.node.start()
        await service.start()
        client = client_node(service.node.port, host=CLIENT_HOST, server_host=OCF_HOST)
        await client.start()
        try:
            await wait_available(client, OCF_HOST)
            ocf = Ocf(service, client, clock, database)
            account = ocf.account(balance=1000)
            ocf.tariff(rating_group=100)
            proxy.cut()
            cca = await ocf.send(ocf.ccr(ocf.new_session(), "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
            assert cca["Result-Code"] == ResultCode.DIAMETER_TOO_BUSY
            assert cca.is_error
            assert not service.ready()
            assert ocf.balance(account) == (1000, 0)
            proxy.restore()
            cca = await ocf.send(ocf.ccr(ocf.new_session(), "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
            assert cca["Result-Code"] == ResultCode.DIAMETER_SUCCESS
            assert service.ready()
            assert ocf.balance(account) == (1000, 60)
        finally:
            await client.stop()
            await service.stop()
            await service.node.stop()
