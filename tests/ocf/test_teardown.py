"""Silent reservations released by Tcc (manual clock), and ASR / RAR to a client node over TCP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from charging.clock import ManualClock
from charging.diameter import Message
from charging.diameter.constants import ResultCode
from ocf import provisioning as p
from tests.conftest import Database
from tests.ocf.conftest import CLIENT_HOST, OCF_HOST, Ocf, mscc, short_settings, start_ocf
from tests.support.diameter import client_node, wait_available, wait_until

RC = ResultCode


async def test_silent_session_is_released_after_validity_time_plus_tcc_margin(ocf: Ocf) -> None:
    account = ocf.account(balance=1000)
    ocf.tariff(rating_group=100)
    sid = ocf.new_session()
    await ocf.send(ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    ocf.clock.advance(39)  # Validity-Time 30 + margin 10
    assert await ocf.service.sweeper.sweep() == []
    assert ocf.balance(account) == (1000, 60)
    ocf.clock.advance(1)
    expired = await ocf.service.sweeper.sweep()
    assert [s.session_id for s in expired] == [sid]
    assert ocf.balance(account) == (1000, 0)
    cca = await ocf.send(ocf.ccr(sid, "UPDATE_REQUEST", 1, mscc(100, {}, {"CC-Time": 10})))
    assert cca["Result-Code"] == RC.DIAMETER_UNKNOWN_SESSION_ID
    assert ocf.run(p.history, account, 1)[0]["kind"] == "release"


async def test_each_update_restarts_the_tcc_supervision(ocf: Ocf) -> None:
    account = ocf.account(balance=1000)
    ocf.tariff(rating_group=100)
    sid = ocf.new_session()
    await ocf.send(ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    ocf.clock.advance(30)
    await ocf.send(ocf.ccr(sid, "UPDATE_REQUEST", 1, mscc(100, {"CC-Time": 60}, {"CC-Time": 30})))
    ocf.clock.advance(30)
    assert await ocf.service.sweeper.sweep() == []
    assert ocf.balance(account) == (970, 60)


class AppServer:
    """A client node that answers ASR and RAR as a test application server would."""

    def __init__(self, port: int, asa_code: int = 2001) -> None:
        self.node = client_node(port, host=CLIENT_HOST, server_host=OCF_HOST)
        self.asr: list[str] = []
        self.rar: list[tuple[str, int]] = []
        self.asa_code = asa_code
        self.node.register(4, 274, self.on_asr)
        self.node.register(4, 258, self.on_rar)

    async def on_asr(self, msg: Message, peer: Any) -> Message:
        self.asr.append(msg["Session-Id"])
        return self.node.make_answer(msg, self.asa_code)

    async def on_rar(self, msg: Message, peer: Any) -> Message:
        self.rar.append((msg["Session-Id"], msg["Re-Auth-Request-Type"]))
        return self.node.make_answer(msg, 2001)

    async def send(self, msg: Message) -> Message:
        return await self.node.request(msg, peer=OCF_HOST, timeout=5.0)


@pytest.fixture
async def app_server(ocf: Ocf) -> AsyncIterator[AppServer]:
    # The fixture's own client is replaced by one that serves ASR and RAR.
    await ocf.client.stop()
    server = AppServer(ocf.service.node.port)
    await server.node.start()
    await wait_available(server.node, OCF_HOST)
    ocf.client = server.node
    yield server


async def test_blocking_an_account_sends_asr_to_the_client_of_each_open_session(
    ocf: Ocf, app_server: AppServer
) -> None:
    account = ocf.account(balance=1000)
    ocf.tariff(rating_group=100)
    sids = [ocf.new_session() for _ in range(3)]
    for sid in sids:
        await ocf.send(ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    ocf.run(p.set_blocked, account, True, ocf.clock.now())  # as the CLI does: the OCF finds it by polling
    await wait_until(lambda: len(app_server.asr) == 3, what="three ASRs")
    assert sorted(app_server.asr) == sorted(sids)
    cca = await ocf.send(ocf.ccr(sids[0], "TERMINATION_REQUEST", 1, mscc(100, used={"CC-Time": 5})))
    assert cca["Result-Code"] == RC.DIAMETER_SUCCESS
    assert ocf.balance(account) == (995, 120)
    await asyncio.sleep(0.2)
    assert len(app_server.asr) == 3  # answered ASRs are not sent again


@pytest.mark.parametrize("settings", [short_settings()])
async def test_client_that_does_not_know_the_session_gets_it_released_by_the_ocf(
    database: Database, settings: Any
) -> None:
    clock = ManualClock()
    service = start_ocf(database.engine, settings, clock)
    await service.node.start()
    await service.start()
    server = AppServer(service.node.port, asa_code=RC.DIAMETER_UNKNOWN_SESSION_ID)
    await server.node.start()
    try:
        await wait_available(server.node, OCF_HOST)
        ocf = Ocf(service, server.node, clock, database)
        account = ocf.account(balance=1000)
        ocf.tariff(rating_group=100)
        sid = ocf.new_session()
        await ocf.send(ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
        ocf.run(p.set_blocked, account, True, clock.now())
        await wait_until(lambda: ocf.balance(account) == (1000, 0), what="the reservation released")
        assert server.asr == [sid]
        assert ocf.run(p.list_sessions, account, "aborted")[0]["session_id"] == sid
    finally:
        await server.node.stop()
        await service.stop()
        await service.node.stop()


async def test_exhausted_account_gets_asr_for_sessions_left_without_units(ocf: Ocf, app_server: AppServer) -> None:
    account = ocf.account(balance=100)
    ocf.tariff(rating_group=100)
    dry, holding = ocf.new_session(), ocf.new_session()
    await ocf.send(ocf.ccr(dry, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    await ocf.send(ocf.ccr(holding, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))  # the last 40 s
    cca = await ocf.send(ocf.ccr(dry, "UPDATE_REQUEST", 1, mscc(100, {"CC-Time": 60}, {"CC-Time": 60})))
    assert cca.all("Multiple-Services-Credit-Control")[0]["Result-Code"] == RC.DIAMETER_CREDIT_LIMIT_REACHED
    await wait_until(lambda: app_server.asr == [dry], what="ASR for the dry session")
    await asyncio.sleep(0.2)
    assert app_server.asr == [dry]
    assert ocf.balance(account) == (40, 40)


async def test_top_up_sends_rar_and_the_clients_update_gets_new_units(ocf: Ocf, app_server: AppServer) -> None:
    account = ocf.account(balance=50)
    ocf.tariff(rating_group=100)
    sid = ocf.new_session()
    cca = await ocf.send(ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    assert "Final-Unit-Indication" in cca.all("Multiple-Services-Credit-Control")[0]
    ocf.run(p.top_up, account, 1000, ocf.clock.now())
    await wait_until(lambda: app_server.rar == [(sid, 0)], what="RAR AUTHORIZE_ONLY")
    cca = await ocf.send(ocf.ccr(sid, "UPDATE_REQUEST", 1, mscc(100, {"CC-Time": 60}, {"CC-Time": 20})))
    group = cca.all("Multiple-Services-Credit-Control")[0]
    assert group["Granted-Service-Unit"]["CC-Time"] == 60
    assert "Final-Unit-Indication" not in group
    assert ocf.balance(account) == (1030, 60)


async def test_tariff_taking_effect_later_sends_rar_when_its_time_comes(ocf: Ocf, app_server: AppServer) -> None:
    ocf.account(balance=1000)
    ocf.tariff(rating_group=100, price=1)
    sid = ocf.new_session()
    await ocf.send(ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    ocf.tariff(rating_group=100, price=2, effective_from=ocf.clock.now() + 100)
    await ocf.service.sweeper.sweep()
    for number in (1, 2, 3):  # updates every 30 s keep the session within Tcc (40 s) past the change
        ocf.clock.advance(30)
        await ocf.send(ocf.ccr(sid, "UPDATE_REQUEST", number, mscc(100, {"CC-Time": 60}, {"CC-Time": 30})))
        await ocf.service.sweeper.sweep()
    await asyncio.sleep(0.2)
    assert app_server.rar == []  # 90 s: the new tariff is not in force yet
    ocf.clock.advance(15)
    await ocf.service.sweeper.sweep()
    await wait_until(lambda: app_server.rar == [(sid, 0)], what="RAR once the new tariff applies")
