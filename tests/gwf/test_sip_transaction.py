"""RFC 3261 section 17 (with RFC 6026) transaction state machines, driven by a hand-moved ``now``."""

from __future__ import annotations

import itertools

from charging.gwf.sip.message import Request, Response, make_response, parse_message
from charging.gwf.sip.transaction import (
    Addr,
    Deliver,
    InviteClientTransaction,
    InviteServerTransaction,
    NewRequest,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    State,
    StrayResponse,
    Timeout,
    TimerValues,
    TransactionLayer,
    Transmit,
)

UDP = Addr("UDP", "192.0.2.10", 5060)
TCP = Addr("TCP", "192.0.2.10", 5060)
T = TimerValues()  # T1 0.5 s, T2 4 s, T4 5 s


def request(method: str = "INVITE", branch: str = "z9hG4bK-b1", cseq_method: str | None = None) -> Request:
    raw = (
        f"{method} sip:bob@example.net SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5062;branch={branch}\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:alice@example.net>;tag=a\r\nTo: <sip:bob@example.net>\r\n"
        f"Call-ID: c1\r\nCSeq: 1 {cseq_method or method}\r\nContact: <sip:alice@192.0.2.1:5062>\r\n\r\n"
    ).encode()
    msg = parse_message(raw)
    assert isinstance(msg, Request)
    return msg


def response(req: Request, status: int, tag: str = "b") -> Response:
    return make_response(req, status, to_tag=tag)


def run_until(tx: object, end: float, step: float = 0.01) -> list[tuple[float, object]]:
    """Call ``timer`` at every deadline up to ``end``; returns (time, action) for every action."""
    seen: list[tuple[float, object]] = []
    while True:
        deadline = tx.next_deadline()  # type: ignore[attr-defined]
        if deadline is None or deadline > end:
            return seen
        seen += [(deadline, a) for a in tx.timer(deadline)]  # type: ignore[attr-defined]


def test_invite_client_retransmits_with_doubling_timer_a_until_timer_b() -> None:
    tx = InviteClientTransaction(request(), UDP, T)
    assert [type(a) for a in tx.start(0.0)] == [Transmit]
    seen = run_until(tx, 100.0)
    resends = [t for t, a in seen if isinstance(a, Transmit)]
    assert resends == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # A doubles without the T2 cap (17.1.1.2)
    assert [t for t, a in seen if isinstance(a, Timeout)] == [32.0]  # B = 64*T1
    assert tx.terminated


def test_invite_client_over_tcp_never_retransmits() -> None:
    tx = InviteClientTransaction(request(), TCP, T)
    tx.start(0.0)
    seen = run_until(tx, 100.0)
    assert [type(a) for _, a in seen] == [Timeout]


def test_invite_client_acks_a_failure_itself_and_absorbs_its_retransmissions() -> None:
    req = request()
    tx = InviteClientTransaction(req, UDP, T)
    tx.start(0.0)
    actions = tx.receive(response(req, 486), 1.0)
    ack = actions[0]
    assert isinstance(ack, Transmit) and isinstance(ack.message, Request)
    assert ack.message.method == "ACK" and ack.message.to.tag == "b"
    assert ack.message.top_via.branch == "z9hG4bK-b1" and str(ack.message.cseq) == "1 ACK"
    assert isinstance(actions[1], Deliver) and tx.state is State.COMPLETED
    again = tx.receive(response(req, 486), 2.0)
    assert [type(a) for a in again] == [Transmit]  # the ACK again, nothing for the TU
    assert run_until(tx, 100.0) == [] and tx.terminated  # Timer D (32 s) ends it quietly


def test_invite_client_passes_every_2xx_up_while_accepted() -> None:
    req = request()
    tx = InviteClientTransaction(req, UDP, T)
    tx.start(0.0)
    assert [type(a) for a in tx.receive(response(req, 180), 0.2)] == [Deliver]
    assert run_until(tx, 20.0) == []  # proceeding: no retransmission, no Timer B
    assert [type(a) for a in tx.receive(response(req, 200), 21.0)] == [Deliver]
    assert tx.state is State.ACCEPTED
    assert [type(a) for a in tx.receive(response(req, 200), 21.5)] == [Deliver]  # RFC 6026 7.2
    run_until(tx, 21.0 + 32.0)
    assert tx.terminated  # Timer M


def test_non_invite_client_backs_off_to_t2_and_times_out_with_timer_f() -> None:
    tx = NonInviteClientTransaction(request("BYE"), UDP, T)
    tx.start(0.0)
    seen = run_until(tx, 100.0)
    resends = [t for t, a in seen if isinstance(a, Transmit)]
    assert resends[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]  # 0.5, 1, 2, 4, then T2 = 4
    assert all(b - a == 4.0 for a, b in itertools.pairwise(resends[4:]))
    assert [t for t, a in seen if isinstance(a, Timeout)] == [32.0]


def test_non_invite_client_waits_timer_k_after_a_final_response() -> None:
    req = request("BYE")
    udp = NonInviteClientTransaction(req, UDP, T)
    udp.start(0.0)
    udp.receive(response(req, 200), 0.1)
    assert udp.next_deadline() == 0.1 + T.t4
    assert udp.receive(response(req, 200), 0.2) == []  # absorbed
    tcp = NonInviteClientTransaction(request("BYE"), TCP, T)
    tcp.start(0.0)
    tcp.receive(response(req, 200), 0.1)
    assert tcp.next_deadline() == 0.1  # K = 0 on a reliable transport


def test_invite_server_retransmits_its_failure_until_the_ack_then_waits_timer_i() -> None:
    req = request()
    tx = InviteServerTransaction(req, UDP, T)
    tx.respond(response(req, 100), 0.0)
    resent = tx.receive(req, 0.3)
    assert isinstance(resent[0], Transmit) and resent[0].message.status == 100  # type: ignore[union-attr]
    tx.respond(response(req, 486), 1.0)
    seen = run_until(tx, 9.0)
    assert [t for t, _ in seen] == [1.5, 2.5, 4.5, 8.5]  # G: T1 doubling, capped at T2
    tx.receive(request("ACK", cseq_method="ACK"), 9.0)
    assert tx.state is State.CONFIRMED
    assert run_until(tx, 100.0) == [] and tx.terminated


def test_invite_server_gives_up_on_a_missing_ack_with_timer_h() -> None:
    req = request()
    tx = InviteServerTransaction(req, TCP, T)
    tx.respond(response(req, 486), 0.0)
    seen = run_until(tx, 100.0)
    assert [(t, type(a)) for t, a in seen] == [(32.0, Timeout)]  # and no G on TCP


def test_invite_server_sends_2xx_retransmissions_of_the_tu_while_accepted() -> None:
    req = request()
    tx = InviteServerTransaction(req, UDP, T)
    tx.respond(response(req, 200), 0.0)
    assert tx.state is State.ACCEPTED
    assert len(tx.respond(response(req, 200), 0.5)) == 1
    assert tx.receive(req, 0.6) == []  # a retransmitted INVITE is absorbed (RFC 6026 7.1)
    run_until(tx, 40.0)
    assert tx.terminated  # Timer L


def test_invite_server_answers_to_the_source_port_when_rport_asked_for_it() -> None:
    req = request()
    req.headers.set("Via", "SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK-b1;rport")
    tx = InviteServerTransaction(req, Addr("UDP", "198.51.100.4", 40000), T)
    (sent,) = tx.respond(response(req, 180), 0.0)
    assert isinstance(sent, Transmit) and sent.dest == Addr("UDP", "198.51.100.4", 40000)
    plain = InviteServerTransaction(request(), Addr("UDP", "198.51.100.4", 40000), T)
    (sent,) = plain.respond(response(req, 180), 0.0)
    assert isinstance(sent, Transmit) and sent.dest == Addr("UDP", "198.51.100.4", 5062)


def test_non_invite_server_repeats_its_final_response_until_timer_j() -> None:
    req = request("BYE")
    tx = NonInviteServerTransaction(req, UDP, T)
    assert tx.receive(req, 0.1) == []  # trying: nothing to repeat yet
    tx.respond(response(req, 200), 0.2)
    assert len(tx.receive(req, 0.3)) == 1
    assert tx.next_deadline() == 0.2 + 32.0


def test_layer_matches_responses_acks_and_cancels_to_their_transactions() -> None:
    layer = TransactionLayer(T)
    invite = request()
    (event,) = layer.receive(invite, UDP, 0.0)
    assert isinstance(event, NewRequest) and isinstance(event.transaction, InviteServerTransaction)
    assert layer.receive(invite, UDP, 0.1) == []  # a retransmission goes to the transaction, not up
    layer.respond(event.transaction, response(invite, 486), 0.2)
    assert layer.receive(request("ACK", cseq_method="ACK"), UDP, 0.3) == []  # absorbed by the IST
    assert event.transaction.state is State.CONFIRMED
    (cancel,) = layer.receive(request("CANCEL"), UDP, 0.4)
    assert isinstance(cancel, NewRequest) and isinstance(cancel.transaction, NonInviteServerTransaction)
    assert layer.find_invite(request("CANCEL")) is event.transaction
    # a 2xx's ACK has a branch of its own: it comes up without a transaction
    (ack,) = layer.receive(request("ACK", branch="z9hG4bK-other", cseq_method="ACK"), UDP, 0.5)
    assert isinstance(ack, NewRequest) and ack.transaction is None

    out = request("BYE", branch="z9hG4bK-out")
    ctx, _ = layer.send_request(out, UDP, 1.0)
    (delivered,) = layer.receive(response(out, 200), UDP, 1.1)
    assert isinstance(delivered, Deliver) and delivered.transaction is ctx
    (stray,) = layer.receive(response(request("BYE", branch="z9hG4bK-unknown"), 200), UDP, 1.2)
    assert isinstance(stray, StrayResponse)


def test_layer_forgets_transactions_once_terminated() -> None:
    layer = TransactionLayer(T)
    out = request("OPTIONS", branch="z9hG4bK-o")
    layer.send_request(out, TCP, 0.0)
    layer.receive(response(out, 200), TCP, 0.1)
    layer.timer(0.1)
    assert layer.transactions == {}
    assert layer.next_deadline() is None


def test_an_rfc_2543_request_without_the_cookie_is_still_matched_to_its_transaction() -> None:
    layer = TransactionLayer(T)
    old = request(branch="1234")
    (event,) = layer.receive(old, UDP, 0.0)
    assert isinstance(event, NewRequest) and event.transaction is not None
    assert layer.receive(request(branch="1234"), UDP, 0.5) == []  # the retransmission is absorbed
    layer.respond(event.transaction, response(old, 486), 0.6)
    ack = request("ACK", branch="1234", cseq_method="ACK")
    ack.headers.set("To", "<sip:bob@example.net>;tag=b")  # the failure's tag, which the INVITE lacked
    assert layer.receive(ack, UDP, 0.7) == []
    assert event.transaction.state is State.CONFIRMED
