"""Calls through the IMS-GWF between sipp user agents, charged over Ro by the project's own OCF.

Real parts: sipp (Debian sip-tester) as caller and callee over UDP or TCP, the IMS-GWF's SIP stack and
Diameter node, the OCF service (``ocf.service``) with its database (SQLite and PostgreSQL), all over
loopback sockets.  What each user agent received, and when, is read from sipp's own message trace; what
the GWF did, from its record of sent SIP messages and Ro exchanges; what was charged, from the OCF's
database.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from charging.diameter import Message
from charging.gwf.credit import ADMINISTRATIVE, FORCED_REAUTHORISATION, LOGOUT, QUOTA_EXHAUSTED
from charging.gwf.server import Gwf
from ocf import provisioning as p
from tests.gwf.conftest import ALICE, GwfFactory, Ocf, Sipp, free_port, gwf_settings, requires_sipp
from tests.support.diameter import wait_until

pytestmark = requires_sipp


@dataclass
class Running:
    gwf: Gwf
    caller: Sipp
    callee: Sipp
    ccrs: list[Message]
    caller_port: int
    callee_port: int

    async def finish(self) -> None:
        caller_status = await self.caller.wait()
        callee_status = await self.callee.wait()
        assert caller_status == 0, self.caller.report()
        assert callee_status == 0, self.callee.report()

    def kinds(self) -> list[str]:
        return [e.kind for e in self.gwf.ro_log]

    def used(self) -> int:
        return sum(e.used_seconds or 0 for e in self.gwf.ro_log)


async def place_call(
    ocf: Ocf,
    start_gwf: GwfFactory,
    tmp_path: Path,
    caller_scenario: str,
    callee_scenario: str = "callee.xml",
    transport: str = "udp",
    caller_args: tuple[str, ...] = (),
    callee_args: tuple[str, ...] = (),
    **overrides: Any,
) -> Running:
    callee_port, caller_port = free_port(), free_port()
    gwf = await start_gwf(gwf_settings(ocf.port, callee_port, transport, **overrides))
    ccrs: list[Message] = []
    gwf.node.observers.append(
        lambda direction, peer, msg: (
            ccrs.append(Message.decode(msg.to_bytes())) if direction == "send" and msg.code == 272 else None
        )
    )
    mode = "u1" if transport == "udp" else "t1"
    gwf_port = gwf.udp_port if transport == "udp" else gwf.tcp_port
    callee = Sipp("callee", tmp_path, callee_scenario, callee_port, "-timeout", "30s", *callee_args, transport=mode)
    await callee.start()
    caller = Sipp(
        "caller",
        tmp_path,
        caller_scenario,
        caller_port,
        f"127.0.0.1:{gwf_port}",
        "-timeout",
        "30s",
        *caller_args,
        transport=mode,
    )
    await caller.start()
    return Running(gwf, caller, callee, ccrs, caller_port, callee_port)


async def answered(gwf: Gwf) -> None:
    await wait_until(
        lambda: any(c.credit.answered_at is not None for c in gwf.active_calls()), 10.0, "the call to be answered"
    )


async def test_a_normal_call_is_charged_with_initial_update_and_termination(
    ocf: Ocf, start_gwf: GwfFactory, tmp_path: Path
) -> None:
    await normal_call(ocf, start_gwf, tmp_path, "udp")


async def test_a_normal_call_over_tcp_is_charged_the_same(
    ocf_sqlite: Ocf, start_gwf: GwfFactory, tmp_path: Path
) -> None:
    await normal_call(ocf_sqlite, start_gwf, tmp_path, "tcp")


async def normal_call(ocf: Ocf, start_gwf: GwfFactory, tmp_path: Path, transport: str) -> None:
    account = ocf.subscriber(balance=1000)
    call = await place_call(
        ocf, start_gwf, tmp_path, "caller_hangs_up.xml", transport=transport, caller_args=("-d", "2500")
    )
    await call.finish()
    # The OCF grants 2 s at a time, so a 2.5 s call needs CCR-I, CCR-U and CCR-T, each answered 2001.
    assert call.kinds()[0] == "INITIAL" and call.kinds()[-1] == "TERMINATION"
    assert "UPDATE" in call.kinds()
    assert [e.number for e in call.gwf.ro_log] == list(range(len(call.gwf.ro_log)))
    assert {e.result for e in call.gwf.ro_log} == {"2001"}
    assert all(e.reporting_reason == QUOTA_EXHAUSTED for e in call.gwf.ro_log if e.kind == "UPDATE")
    # The used time reported adds up to the call's length as the caller saw it (200 OK to its BYE).
    talk = call.caller.sent("BYE")[0].at - call.caller.received("SIP/2.0 200")[0].at
    assert abs(call.used() - talk) < 0.6
    assert ocf.balance(account) == (1000 - call.used(), 0)  # 1 cent a second, nothing left reserved
    session = ocf.session(call.gwf.ro_log[0].session_id)
    assert session["state"] == "closed" and session["request_number"] == call.gwf.ro_log[-1].number
    assert call.ccrs[-1]["Termination-Cause"] == LOGOUT
    assert call.callee.received("BYE")  # the caller's BYE went through the GWF
    assert call.gwf.sent_requests("BYE", own=True) == []


async def test_the_ccr_describes_the_session_with_ims_information(
    ocf_sqlite: Ocf, start_gwf: GwfFactory, tmp_path: Path
) -> None:
    ocf_sqlite.subscriber(balance=1000)
    call = await place_call(ocf_sqlite, start_gwf, tmp_path, "caller_hangs_up.xml", caller_args=("-d", "500"))
    await call.finish()
    ccr_i = call.ccrs[0]
    call_id = call.gwf.ro_log[0].call_id
    assert ccr_i["CC-Request-Type"] == 1 and ccr_i["Service-Context-Id"] == "32260@3gpp.org"
    sub = ccr_i["Subscription-Id"]
    assert (sub["Subscription-Id-Type"], sub["Subscription-Id-Data"]) == (2, ALICE)  # END_USER_SIP_URI
    mscc = ccr_i["Multiple-Services-Credit-Control"]
    assert mscc["Rating-Group"] == 100 and mscc["Requested-Service-Unit"]["CC-Time"] == 60
    ims = ccr_i.find("Service-Information/IMS-Information")
    assert ims["IMS-Charging-Identifier"] == f"icid-{call_id}"
    assert ims["Inter-Operator-Identifier"]["Originating-IOI"] == "orig.example.net"
    assert ims["Node-Functionality"] == 6 and ims["Role-Of-Node"] == 0  # AS, originating
    assert ims["Calling-Party-Address"] == ALICE and ims["Called-Party-Address"] == "sip:bob@example.net"
    assert ims["Event-Type"]["SIP-Method"] == "INVITE" and ims["User-Session-Id"] == call_id
    ccr_t = call.ccrs[-1]
    assert ccr_t["CC-Request-Type"] == 3
    assert ccr_t["Multiple-Services-Credit-Control"]["Used-Service-Unit"]["CC-Time"] == call.gwf.ro_log[-1].used_seconds


@pytest.mark.parametrize(
    ("case", "status"),
    [("no credit", 402), ("blocked", 403), ("unknown subscriber", 403)],
)
async def test_a_refused_call_gets_402_or_403_and_the_callee_never_rings(
    ocf: Ocf, start_gwf: GwfFactory, tmp_path: Path, case: str, status: int
) -> None:
    if case == "no credit":
        ocf.subscriber(balance=0)
    elif case == "blocked":
        account = ocf.subscriber(balance=1000)
        ocf.run(p.set_blocked, account, True, ocf.clock.now())
    call = await place_call(
        ocf,
        start_gwf,
        tmp_path,
        "caller_refused.xml",
        callee_args=("-timeout", "2s"),  # the callee gives up
    )
    assert await call.caller.wait() == 0, call.caller.report()
    await call.callee.wait()
    (final,) = [t for t in call.caller.received("SIP/2.0 4") + call.caller.received("SIP/2.0 5")]
    assert final.first_line.startswith(f"SIP/2.0 {status} ")
    assert call.callee.trace() == []  # not a single message reached the callee
    assert call.gwf.sent_requests("INVITE") == []
    assert call.kinds() == ["INITIAL"]  # no CCR-T after a refused CCR-I


async def test_credit_running_out_mid_call_ends_both_legs_within_a_second_and_the_balance_at_zero(
    ocf: Ocf, start_gwf: GwfFactory, tmp_path: Path
) -> None:
    credit_seconds = 3  # 3 cents at 1 cent a second: a grant of 2 s, then a final one of 1 s
    account = ocf.subscriber(balance=credit_seconds)
    call = await place_call(ocf, start_gwf, tmp_path, "caller_is_hung_up.xml")
    await call.finish()  # both sipp agents got a BYE (each waits for one, and fails without)
    caller_answer = call.caller.received("SIP/2.0 200")[0].at
    callee_answer = call.callee.sent("SIP/2.0 200")[0].at
    for bye, answer in (
        (call.caller.received("BYE")[0].at, caller_answer),
        (call.callee.received("BYE")[0].at, callee_answer),
    ):
        assert credit_seconds - 0.2 <= bye - answer < credit_seconds + 1.0
    # the GWF's own record: BYE to each leg, then the CCR-T with the final units
    byes = call.gwf.sent_requests("BYE", own=True)
    assert sorted(b.dest.port for b in byes) == sorted([call.caller_port, call.callee_port])
    termination = [e for e in call.gwf.ro_log if e.kind == "TERMINATION"]
    assert len(termination) == 1 and termination[0].at >= max(b.at for b in byes)
    assert call.used() == credit_seconds
    assert ocf.balance(account) == (0, 0)
    assert min(row["balance_after"] for row in ocf.ledger(account)) == 0  # never below zero


async def test_a_bye_from_the_callee_ends_the_charging_too(
    ocf_sqlite: Ocf, start_gwf: GwfFactory, tmp_path: Path
) -> None:
    account = ocf_sqlite.subscriber(balance=1000)
    call = await place_call(
        ocf_sqlite, start_gwf, tmp_path, "caller_is_hung_up.xml", "callee_hangs_up.xml", callee_args=("-d", "2000")
    )
    await call.finish()
    assert call.kinds()[0] == "INITIAL" and call.kinds()[-1] == "TERMINATION"
    talk = call.callee.sent("BYE")[0].at - call.callee.sent("SIP/2.0 200")[0].at
    assert abs(call.used() - talk) < 0.6
    assert call.gwf.sent_requests("BYE", own=True) == []  # the callee's BYE, forwarded
    assert ocf_sqlite.balance(account) == (1000 - call.used(), 0)


async def test_a_cancelled_call_is_terminated_with_nothing_used(
    ocf_sqlite: Ocf, start_gwf: GwfFactory, tmp_path: Path
) -> None:
    account = ocf_sqlite.subscriber(balance=1000)
    call = await place_call(ocf_sqlite, start_gwf, tmp_path, "caller_cancels.xml", "callee_rings.xml")
    await call.finish()
    await wait_until(lambda: len(call.gwf.ro_log) == 2, 5.0, "the CCR-T")
    assert call.kinds() == ["INITIAL", "TERMINATION"]
    assert call.gwf.ro_log[-1].used_seconds == 0 and call.gwf.ro_log[-1].result == "2001"
    assert call.callee.received("CANCEL")  # the GWF cancelled the ringing leg
    assert ocf_sqlite.balance(account) == (1000, 0)


async def test_an_operator_block_mid_call_aborts_it_asa_then_bye_to_both_then_ccr_t(
    ocf: Ocf, start_gwf: GwfFactory, tmp_path: Path
) -> None:
    account = ocf.subscriber(balance=1000)
    call = await place_call(ocf, start_gwf, tmp_path, "caller_is_hung_up.xml")
    diameter: list[tuple[float, str]] = []
    call.gwf.node.observers.append(
        lambda direction, peer, msg: diameter.append((call.gwf.clock.now(), f"{direction} {msg.command_name}"))
    )
    await answered(call.gwf)
    await asyncio.sleep(1.0)
    ocf.run(p.set_blocked, account, True, ocf.clock.now())
    ocf.service.teardown.wake()
    await call.finish()  # both legs got a BYE
    asa = [t for t, what in diameter if what == "send ASA"]
    ccr_t = [t for t, what in diameter if what == "send CCR"][-1]
    byes = call.gwf.sent_requests("BYE", own=True)
    assert len(asa) == 1 and len(byes) == 2
    assert asa[0] <= min(b.at for b in byes) and max(b.at for b in byes) <= ccr_t
    assert call.ccrs[-1]["Termination-Cause"] == ADMINISTRATIVE
    assert call.kinds()[-1] == "TERMINATION" and call.gwf.ro_log[-1].result == "2001"
    assert ocf.balance(account) == (1000 - call.used(), 0)
    assert call.used() >= 1


async def test_a_top_up_mid_call_reauthorises_and_the_call_outlives_its_first_credit(
    ocf: Ocf, start_gwf: GwfFactory, tmp_path: Path
) -> None:
    account = ocf.subscriber(balance=3)  # 3 s of credit: the grant after the first CCR-U is final
    call = await place_call(ocf, start_gwf, tmp_path, "caller_hangs_up.xml", caller_args=("-d", "3800"))
    await wait_until(lambda: any(c.credit.final for c in call.gwf.active_calls()), 10.0, "the final grant")
    ocf.run(p.top_up, account, 1000, ocf.clock.now())
    ocf.service.teardown.wake()  # the OCF sends RAR for sessions holding final units
    await call.finish()
    assert any(e.kind == "UPDATE" and e.reporting_reason == FORCED_REAUTHORISATION for e in call.gwf.ro_log)
    assert call.gwf.sent_requests("BYE", own=True) == []  # the caller hung up, after the first 3 s
    talk = call.caller.sent("BYE")[0].at - call.caller.received("SIP/2.0 200")[0].at
    assert talk > 3.5 and abs(call.used() - talk) < 0.6
    assert ocf.balance(account) == (1003 - call.used(), 0)


async def test_stopping_the_gwf_ends_the_calls_it_carries_and_reports_their_usage(
    ocf_sqlite: Ocf, start_gwf: GwfFactory, tmp_path: Path
) -> None:
    account = ocf_sqlite.subscriber(balance=1000)
    call = await place_call(ocf_sqlite, start_gwf, tmp_path, "caller_is_hung_up.xml")
    await answered(call.gwf)
    await asyncio.sleep(1.0)
    await call.gwf.stop()
    await call.finish()  # both legs got a BYE
    assert call.ccrs[-1]["Termination-Cause"] == ADMINISTRATIVE
    assert call.kinds()[-1] == "TERMINATION" and call.gwf.ro_log[-1].result == "2001"
    assert ocf_sqlite.balance(account) == (1000 - call.used(), 0)


async def test_a_malformed_invite_over_udp_gets_400_and_nothing_is_charged(ocf: Ocf, start_gwf: GwfFactory) -> None:
    gwf = await start_gwf(gwf_settings(ocf.port, free_port()))
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            replies.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        invite = (
            f"INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bK-bad1\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <{ALICE}>;tag=a1\r\n"
            "To: <sip:bob@ims.test>\r\n"
            "Call-ID: malformed-1\r\n"
            "CSeq: 1 INVITE\r\n"
            "Content-Length: many\r\n\r\n"
        )
        assert gwf.udp_port is not None
        transport.sendto(invite.encode(), ("127.0.0.1", gwf.udp_port))
        reply = await asyncio.wait_for(replies.get(), 5.0)
    finally:
        transport.close()
    assert reply.startswith(b"SIP/2.0 400 ")
    assert b"Call-ID: malformed-1\r\n" in reply
    assert not gwf.ro_log  # no CCR for it
    assert gwf.sent_requests("INVITE") == []
