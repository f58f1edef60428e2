"""Credit-Control-Failure-Handling (RFC 4006 5.7 and section 7) when the OCF does not answer within Tx.

Real parts: sipp calls through the IMS-GWF, the project's OCF (on SQLite: the database plays no part in
what is tested), and between the two a TCP proxy that goes silent (``cut("blackhole")``): connections stay
up, nothing gets through, as when the OCF hangs or the network partitions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from charging.diameter import Message
from tests.gwf.conftest import GwfFactory, Ocf, Sipp, free_port, gwf_settings, requires_sipp
from tests.support.diameter import wait_until
from tests.support.tcpproxy import TcpProxy

pytestmark = requires_sipp

TX = 0.5


@pytest.fixture
def path_to_ocf(ocf_sqlite: Ocf, start_gwf: GwfFactory) -> Iterator[TcpProxy]:
    """Set up after the GWF fixture, so torn down before it: the GWF then stops without a silent peer."""
    with TcpProxy("127.0.0.1", ocf_sqlite.port) as proxy:
        yield proxy


def sent_ccrs(gwf_node: object) -> list[Message]:
    seen: list[Message] = []
    gwf_node.observers.append(  # type: ignore[attr-defined]
        lambda direction, peer, msg: (
            seen.append(Message.decode(msg.to_bytes())) if direction == "send" and msg.code == 272 else None
        )
    )
    return seen


async def test_terminate_refuses_the_call_503_when_the_initial_request_is_not_answered(
    ocf_sqlite: Ocf, path_to_ocf: TcpProxy, start_gwf: GwfFactory, tmp_path: Path
) -> None:
    ocf_sqlite.subscriber(balance=1000)
    gwf = await start_gwf(
        gwf_settings(path_to_ocf.port, free_port(), failure_handling="TERMINATE", tx_seconds=TX, failover_seconds=TX)
    )
    ccrs = sent_ccrs(gwf.node)
    path_to_ocf.cut("blackhole")
    caller = Sipp("caller", tmp_path, "caller_refused.xml", free_port(), f"127.0.0.1:{gwf.udp_port}", "-timeout", "20s")
    await caller.start()
    assert await caller.wait() == 0, caller.report()
    assert caller.received("SIP/2.0 503")
    assert gwf.sent_requests("INVITE") == []
    assert [(e.kind, e.result) for e in gwf.ro_log] == [("INITIAL", "timeout")]
    assert len(ccrs) == 1  # no retry with TERMINATE


async def test_continue_lets_the_call_go_on_without_credit_control_and_retries_with_the_t_flag(
    ocf_sqlite: Ocf, path_to_ocf: TcpProxy, start_gwf: GwfFactory, tmp_path: Path
) -> None:
    ocf_sqlite.subscriber(balance=1000)
    callee_port = free_port()
    gwf = await start_gwf(
        gwf_settings(path_to_ocf.port, callee_port, failure_handling="CONTINUE", tx_seconds=TX, failover_seconds=TX)
    )
    ccrs = sent_ccrs(gwf.node)
    path_to_ocf.cut("blackhole")
    callee = await Sipp("callee", tmp_path, "callee.xml", callee_port, "-timeout", "20s").start()
    caller = Sipp(
        "caller", tmp_path, "caller_hangs_up.xml", free_port(), f"127.0.0.1:{gwf.udp_port}", "-d", "2000",
        "-timeout", "20s",
    )  # fmt: skip
    await caller.start()
    assert await caller.wait() == 0, caller.report()
    assert await callee.wait() == 0, callee.report()
    assert gwf.sent_requests("BYE", own=True) == []  # the caller hung up; the GWF did not end the call
    assert [(e.kind, e.result) for e in gwf.ro_log] == [("INITIAL", "timeout"), ("INITIAL", "timeout")]
    first, retry = ccrs  # and no CCR-T: credit control was given up for this call
    assert not first.is_retransmit and retry.is_retransmit  # RFC 6733 5.5.4 / RFC 4006 5.7
    assert retry["Session-Id"] == first["Session-Id"] and retry["CC-Request-Number"] == 0
    assert retry.end_to_end == first.end_to_end


async def test_retry_and_terminate_keeps_the_call_through_tx_then_ends_it_when_the_update_fails(
    ocf_sqlite: Ocf, path_to_ocf: TcpProxy, start_gwf: GwfFactory, tmp_path: Path
) -> None:
    ocf_sqlite.subscriber(balance=1000)
    callee_port = free_port()
    gwf = await start_gwf(
        gwf_settings(
            path_to_ocf.port, callee_port, failure_handling="RETRY_AND_TERMINATE", tx_seconds=TX, failover_seconds=TX
        )
    )
    callee = await Sipp("callee", tmp_path, "callee.xml", callee_port, "-timeout", "20s").start()
    caller = Sipp(
        "caller", tmp_path, "caller_is_hung_up.xml", free_port(), f"127.0.0.1:{gwf.udp_port}", "-timeout", "20s"
    )
    await caller.start()
    await wait_until(lambda: [e.result for e in gwf.ro_log] == ["2001"], 10.0, "the CCA-I")
    path_to_ocf.cut("blackhole")  # the OCF granted 2 s; its answer to the CCR-U will not come
    assert await caller.wait() == 0, caller.report()  # the caller got a BYE
    assert await callee.wait() == 0, callee.report()
    answer = caller.received("SIP/2.0 200")[0].at
    bye = caller.received("BYE")[0].at
    # the CCR-U goes 1.5 s in (2 s granted, 0.5 s margin); Tx passes with the call kept, then the retry fails
    assert bye - answer >= 1.5 + TX
    assert [(e.kind, e.result) for e in gwf.ro_log] == [
        ("INITIAL", "2001"),
        ("UPDATE", "timeout"),
        ("UPDATE", "timeout"),
    ]
    assert len(gwf.sent_requests("BYE", own=True)) == 2
