"""The peer state machine driven with messages and a fake clock: no sockets (RFC 6733 5.6, RFC 3539)."""

from __future__ import annotations

import random

from charging.diameter import Message
from charging.diameter.peer import (
    Action,
    Closed,
    Connect,
    Deliver,
    Disconnect,
    Failback,
    Failover,
    LocalIdentity,
    Peer,
    Send,
    State,
    Timers,
    Watchdog,
)

LOCAL = LocalIdentity("mmm.test", "test", auth_applications=frozenset({4}))
TIMERS = Timers(watchdog=30.0, cea_timeout=10.0, reconnect_min=1.0, reconnect_max=8.0, jitter=0.0)


def new_peer(host: str = "zzz.test", local: LocalIdentity = LOCAL) -> Peer:
    return Peer(local, host, dial=True, timers=TIMERS, rng=random.Random(1))


def sent(actions: list[Action]) -> list[Message]:
    return [a.message for a in actions if isinstance(a, Send)]


def cer_from(host: str) -> Message:
    return Message.request(
        "CER",
        0,
        [
            ("Origin-Host", host),
            ("Origin-Realm", "test"),
            ("Host-IP-Address", "127.0.0.1"),
            ("Vendor-Id", 0),
            ("Product-Name", "x"),
            ("Auth-Application-Id", 4),
        ],
    )


def cea_to(cer: Message, host: str, result: int = 2001) -> Message:
    return cer.answer(
        [
            ("Result-Code", result),
            ("Origin-Host", host),
            ("Origin-Realm", "test"),
            ("Host-IP-Address", "127.0.0.1"),
            ("Vendor-Id", 0),
            ("Product-Name", "x"),
            ("Auth-Application-Id", 4),
        ]
    )


def open_as_initiator(peer: Peer, now: float = 0.0) -> None:
    assert peer.start(now) == [Connect()]
    (cer,) = sent(peer.conn_ack(1, now))
    assert cer.command_name == "CER" and cer["Origin-Host"] == LOCAL.origin_host
    actions = peer.message(1, cea_to(cer, peer.host), now)
    assert Failback() in actions
    assert peer.state is State.I_OPEN and peer.available


def dwa_for(dwr: Message) -> Message:
    return dwr.answer([("Result-Code", 2001), ("Origin-Host", "zzz.test"), ("Origin-Realm", "test")])


def test_initiator_opens_after_a_successful_cea() -> None:
    peer = new_peer()
    open_as_initiator(peer)
    assert peer.info.applications == {4}
    assert peer.conn == 1


def test_failed_cea_closes_and_schedules_a_reconnect_with_backoff() -> None:
    peer = new_peer()
    peer.start(0.0)
    (cer,) = sent(peer.conn_ack(1, 0.0))
    actions = peer.message(1, cea_to(cer, peer.host, result=5010), 0.0)
    assert Disconnect(1) in actions and peer.state is State.CLOSED
    assert peer.timer(0.5) == []
    assert peer.timer(1.0) == [Connect()]
    peer.conn_nack(1.0)
    assert peer.timer(2.9) == []
    assert peer.timer(3.0) == [Connect()], "the second wait doubles"


def test_no_cea_in_time_is_a_timeout() -> None:
    peer = new_peer()
    peer.start(0.0)
    peer.conn_ack(1, 0.0)
    actions = peer.timer(10.0)
    assert Disconnect(1) in actions and peer.state is State.CLOSED


def test_responder_answers_cer_and_opens() -> None:
    peer = Peer(LOCAL, "zzz.test", timers=TIMERS)
    actions = peer.r_conn_cer(7, cer_from("zzz.test"), 0.0)
    (cea,) = sent(actions)
    assert cea["Result-Code"] == 2001 and peer.state is State.R_OPEN and peer.conn == 7


def test_election_won_keeps_the_accepted_connection() -> None:
    local = LocalIdentity("zzz-local.test", "test", auth_applications=frozenset({4}))
    peer = new_peer("aaa.test", local)  # our Origin-Host is the larger: we win
    peer.start(0.0)
    peer.conn_ack(1, 0.0)
    actions = peer.r_conn_cer(2, cer_from("aaa.test"), 0.0)
    assert Disconnect(1) in actions, "our own connection is dropped"
    assert sent(actions)[0]["Result-Code"] == 2001
    assert peer.state is State.R_OPEN and peer.conn == 2


def test_election_lost_keeps_our_connection_once_its_cea_arrives() -> None:
    peer = new_peer("zzz.test")  # mmm < zzz: we lose
    peer.start(0.0)
    (cer,) = sent(peer.conn_ack(1, 0.0))
    assert peer.r_conn_cer(2, cer_from("zzz.test"), 0.0) == []
    assert peer.state is State.WAIT_RETURNS
    actions = peer.message(1, cea_to(cer, "zzz.test"), 0.0)
    assert Disconnect(2) in actions
    assert peer.state is State.I_OPEN and peer.conn == 1


def test_second_connection_to_an_open_peer_is_rejected() -> None:
    peer = new_peer()
    open_as_initiator(peer)
    actions = peer.r_conn_cer(9, cer_from("zzz.test"), 1.0)
    assert sent(actions)[0]["Result-Code"] == 4003 and Disconnect(9) in actions
    assert peer.conn == 1


def test_watchdog_sends_dwr_after_tw_of_silence_and_fails_over_then_back() -> None:
    peer = new_peer()
    open_as_initiator(peer, 0.0)
    assert peer.timer(29.0) == []
    (dwr,) = sent(peer.timer(30.0))
    assert dwr.command_name == "DWR"
    actions = peer.timer(60.0)  # no DWA within Tw: SUSPECT
    assert Failover() in actions and peer.watchdog is Watchdog.SUSPECT and not peer.available
    actions = peer.message(1, dwa_for(dwr), 61.0)
    assert Failback() in actions and peer.watchdog is Watchdog.OKAY and peer.available


def test_watchdog_closes_after_two_silent_periods_and_reopens_with_three_dwas() -> None:
    peer = new_peer()
    open_as_initiator(peer, 0.0)
    peer.timer(30.0)
    peer.timer(60.0)
    actions = peer.timer(90.0)  # SUSPECT and still silent: DOWN
    assert Disconnect(1) in actions and any(isinstance(a, Closed) for a in actions)
    assert peer.watchdog is Watchdog.DOWN and peer.state is State.CLOSED
    assert peer.timer(91.0) == [Connect()]
    (cer,) = sent(peer.conn_ack(2, 91.0))
    actions = peer.message(2, cea_to(cer, "zzz.test"), 91.0)
    assert peer.watchdog is Watchdog.REOPEN and not peer.available, "REOPEN earns traffic back"
    (dwr,) = sent(actions)
    for i in range(2):
        assert Failback() not in peer.message(2, dwa_for(dwr), 92.0 + i)
        (dwr,) = sent(peer.timer(200.0 + 40 * i))
    assert Failback() in peer.message(2, dwa_for(dwr), 300.0)
    assert peer.available


def test_any_message_resets_the_watchdog() -> None:
    peer = new_peer()
    open_as_initiator(peer, 0.0)
    ccr = Message.request("CCR", 4, {"Session-Id": "s"})
    assert peer.message(1, ccr, 25.0) == [Deliver(1, ccr)]
    assert peer.timer(54.0) == []
    assert sent(peer.timer(55.0))[0].command_name == "DWR"


def test_dwr_is_answered_with_dwa() -> None:
    peer = new_peer()
    open_as_initiator(peer)
    dwr = Message.request("DWR", 0, {"Origin-Host": "zzz.test", "Origin-Realm": "test"})
    (dwa,) = sent(peer.message(1, dwr, 1.0))
    assert dwa.command_name == "DWA" and dwa["Result-Code"] == 2001


def test_stop_sends_dpr_and_closes_on_dpa_without_reconnecting() -> None:
    peer = new_peer()
    open_as_initiator(peer)
    (dpr,) = sent(peer.stop(1.0))
    assert dpr.command_name == "DPR" and peer.state is State.CLOSING
    dpa = dpr.answer([("Result-Code", 2001), ("Origin-Host", "zzz.test"), ("Origin-Realm", "test")])
    actions = peer.message(1, dpa, 1.1)
    assert Disconnect(1) in actions and peer.state is State.CLOSED
    assert peer.timer(100.0) == []


def test_dpr_from_the_peer_is_answered_and_closes() -> None:
    peer = new_peer()
    open_as_initiator(peer)
    dpr = Message.request("DPR", 0, {"Origin-Host": "zzz.test", "Origin-Realm": "test", "Disconnect-Cause": 2})
    actions = peer.message(1, dpr, 1.0)
    assert sent(actions)[0].command_name == "DPA" and Disconnect(1) in actions
    assert peer.timer(100.0) == [], "DO_NOT_WANT_TO_TALK_TO_YOU: no reconnect"


def test_message_before_cea_is_an_error() -> None:
    peer = new_peer()
    peer.start(0.0)
    peer.conn_ack(1, 0.0)
    actions = peer.message(1, Message.request("CCR", 4, {"Session-Id": "s"}), 0.1)
    assert Disconnect(1) in actions and peer.state is State.CLOSED
