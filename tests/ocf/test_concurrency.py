"""Many sessions on one account at once never overdraw it: one OCF, and two OCFs sharing the database."""

from __future__ import annotations

import asyncio

from charging.clock import ManualClock
from charging.diameter import Message
from charging.diameter.constants import ResultCode
from ocf.service import OcfService
from tests.ocf.conftest import CLIENT_HOST, Ocf, mscc, short_settings, start_ocf
from tests.support.diameter import client_node, wait_available


def granted_seconds(answer: Message) -> int:
    groups = answer.all("Multiple-Services-Credit-Control")
    return sum(g.find("Granted-Service-Unit/CC-Time", 0) for g in groups)


async def run_sessions(ocf: Ocf, send, count: int, prefix: str) -> tuple[int, int]:
    """``count`` sessions at once: I (60 s), U (uses what it got, asks 60 s), T (uses what it got)."""

    async def one(n: int) -> tuple[int, int]:
        sid = f"{prefix};{n}"
        cca = await send(ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
        if cca["Result-Code"] != ResultCode.DIAMETER_SUCCESS:
            return 0, 0
        got = granted_seconds(cca)
        cca = await send(ocf.ccr(sid, "UPDATE_REQUEST", 1, mscc(100, {"CC-Time": 60}, {"CC-Time": got})))
        used = got
        got = granted_seconds(cca)
        cca = await send(ocf.ccr(sid, "TERMINATION_REQUEST", 2, mscc(100, used={"CC-Time": got})))
        assert cca["Result-Code"] == ResultCode.DIAMETER_SUCCESS
        return 1, used + got

    results = await asyncio.gather(*(one(n) for n in range(count)))
    return sum(r[0] for r in results), sum(r[1] for r in results)


async def test_fifty_concurrent_sessions_on_one_account_never_overdraw_it(ocf: Ocf) -> None:
    account = ocf.account(balance=1000)
    ocf.tariff(rating_group=100)
    started, used = await run_sessions(ocf, ocf.send, 50, f"{CLIENT_HOST};c")
    balance, reserved = ocf.balance(account)
    assert reserved == 0
    assert used == 1000 - balance  # every second used was paid, once
    assert balance == 0  # and the credit was used up, never beyond
    assert 0 < started < 50


async def test_two_ocfs_on_one_database_never_overdraw_a_shared_account(ocf: Ocf) -> None:
    """The second OCF also runs two CCR writers (on PostgreSQL): three transactions at once on one account."""
    account = ocf.account(balance=3000)
    ocf.tariff(rating_group=100)
    other: OcfService = start_ocf(
        ocf.database.new_engine(), short_settings(writers=2), ManualClock(ocf.clock.now()), "ocf2.test"
    )
    await other.node.start()
    await other.start()
    client = client_node(other.node.port, host="as2.test", server_host="ocf2.test")
    await client.start()
    try:
        await wait_available(client, "ocf2.test")

        async def via_other(msg: Message) -> Message:
            return await client.request(msg, peer="ocf2.test", timeout=10.0)

        (s1, used1), (s2, used2) = await asyncio.gather(
            run_sessions(ocf, ocf.send, 60, "as.test;x"), run_sessions(ocf, via_other, 60, "as2.test;y")
        )
    finally:
        await client.stop()
        await other.stop()
        await other.node.stop()
    balance, reserved = ocf.balance(account)
    assert reserved == 0
    assert used1 + used2 == 3000 - balance
    assert balance == 0
    assert s1 + s2 > 0
    assert other.batches > 0 and ocf.service.batches > 0  # both settled on the shared account
