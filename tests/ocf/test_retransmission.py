"""Repeated CCRs (T flag, or the same Session-Id and CC-Request-Number) get the original answer and never debit twice.

The node's own duplicate cache only knows an End-to-End id for a few seconds; these
repeats carry fresh End-to-End ids, so only the OCF's stored answers can catch them.
"""

from __future__ import annotations

from charging.clock import ManualClock
from charging.diameter import FLAG_RETRANSMIT, Message
from charging.diameter.constants import ResultCode
from ocf import provisioning as p
from tests.ocf.conftest import CLIENT_HOST, OCF_HOST, Ocf, mscc, short_settings, start_ocf
from tests.support.diameter import client_node, wait_available


def body(answer: Message) -> bytes:
    return answer.to_bytes()[20:]  # the AVPs: the header's identifiers differ by design


def repeat(msg: Message) -> Message:
    again = Message.decode(msg.to_bytes())
    again.flags |= FLAG_RETRANSMIT
    again.end_to_end = 0  # the client picks a new one, as after a failover
    return again


async def test_update_repeated_with_t_flag_gets_the_original_answer_and_debits_once(ocf: Ocf) -> None:
    account = ocf.account(balance=1000)
    ocf.tariff(rating_group=100)
    sid = ocf.new_session()
    await ocf.send(ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    update = ocf.ccr(sid, "UPDATE_REQUEST", 1, mscc(100, {"CC-Time": 60}, {"CC-Time": 45}))
    first = await ocf.send(update)
    assert ocf.balance(account) == (955, 60)
    again = await ocf.send(repeat(update))
    assert body(again) == body(first)
    assert again.end_to_end != first.end_to_end
    assert ocf.balance(account) == (955, 60)
    assert ocf.service.store.replays == 1


async def test_same_session_and_request_number_without_t_flag_is_a_repeat_too(ocf: Ocf) -> None:
    account = ocf.account(balance=1000)
    ocf.tariff(rating_group=100)
    sid = ocf.new_session()
    await ocf.send(ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    first = await ocf.send(ocf.ccr(sid, "TERMINATION_REQUEST", 1, mscc(100, used={"CC-Time": 30})))
    again = await ocf.send(ocf.ccr(sid, "TERMINATION_REQUEST", 1, mscc(100, used={"CC-Time": 30})))
    assert body(again) == body(first)
    assert again["Result-Code"] == ResultCode.DIAMETER_SUCCESS
    assert ocf.balance(account) == (970, 0)


async def test_buffered_direct_debit_sent_again_is_debited_once(ocf: Ocf) -> None:
    account = ocf.account(balance=100)
    ocf.tariff(service_identifier=20, unit="units", price=15)
    debit = ocf.ccr(
        ocf.new_session(),
        "EVENT_REQUEST",
        0,
        ("Requested-Action", "DIRECT_DEBITING"),
        ("Service-Identifier", 20),
        ("Requested-Service-Unit", {"CC-Service-Specific-Units": 1}),
    )
    first = await ocf.send(debit)
    ocf.clock.advance(3600)  # DDFH TERMINATE_OR_BUFFER: the client sends its stored copy much later
    again = await ocf.send(repeat(debit))
    assert body(again) == body(first)
    assert ocf.balance(account) == (85, 0)


async def test_repeat_after_an_ocf_restart_gets_the_answer_given_before(ocf: Ocf) -> None:
    account = ocf.account(balance=1000)
    ocf.tariff(rating_group=100)
    sid = ocf.new_session()
    initial = ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60}))
    first = await ocf.send(initial)
    # A second OCF on the same database (as after a restart or a failover) answers the repeat.
    clock = ManualClock(ocf.clock.now())
    other = start_ocf(ocf.database.new_engine(), short_settings(), clock, host=OCF_HOST)
    await other.node.start()
    await other.start()
    client = client_node(other.node.port, host=CLIENT_HOST, server_host=OCF_HOST)
    await client.start()
    try:
        await wait_available(client, OCF_HOST)
        again = await client.request(repeat(initial), peer=OCF_HOST, timeout=5.0)
    finally:
        await client.stop()
        await other.stop()
        await other.node.stop()
    assert body(again) == body(first)
    assert ocf.balance(account) == (1000, 60)
    assert len(ocf.run(p.list_sessions, account)) == 1
