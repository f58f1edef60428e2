"""The record-routing proxy core (RFC 3261 section 16) driven with parsed messages and a hand-moved clock."""

from __future__ import annotations

import itertools

from charging.gwf.sip.dialog import CallState
from charging.gwf.sip.message import NameAddr, Request, Response, Uri, make_response, parse_message
from charging.gwf.sip.proxy import (
    CallAnswered,
    CallEnded,
    CallFailed,
    CallOffered,
    Output,
    Proxy,
    ProxyConfig,
    TeardownAnswered,
    loop_hash,
)
from charging.gwf.sip.transaction import Addr, TimerValues, Transmit

ME = "192.0.2.5"
CALLER = Addr("UDP", "192.0.2.1", 5062)
CALLEE = Addr("UDP", "192.0.2.20", 5070)


def proxy(**extra: object) -> Proxy:
    counter = itertools.count(1)
    config = ProxyConfig(host=ME, ports={"UDP": 5060, "TCP": 5060}, next_hop=Uri.parse("sip:192.0.2.20:5070"))
    for key, value in extra.items():
        setattr(config, key, value)
    return Proxy(config, ids=lambda: f"id{next(counter)}")


def invite(*extra_headers: str, uri: str = f"sip:bob@{ME}:5060", max_forwards: int = 70) -> Request:
    lines = [
        f"INVITE {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK-caller1",
        f"Max-Forwards: {max_forwards}",
        "From: Alice <sip:alice@example.net>;tag=alice1",
        "To: Bob <sip:bob@example.net>",
        "Call-ID: call-1",
        "CSeq: 1 INVITE",
        "Contact: <sip:alice@192.0.2.1:5062>",
        *extra_headers,
    ]
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def sent(outputs: list[Output]) -> list[Transmit]:
    return [o for o in outputs if isinstance(o, Transmit)]


def only_request(outputs: list[Output], method: str) -> Transmit:
    found = [t for t in sent(outputs) if isinstance(t.message, Request) and t.message.method == method]
    assert len(found) == 1, found
    return found[0]


def statuses(outputs: list[Output]) -> list[int]:
    return [t.message.status for t in sent(outputs) if isinstance(t.message, Response)]


def callee_answer(forwarded: Request, status: int, *extra: str) -> Response:
    resp = make_response(forwarded, status, to_tag="bob1")
    resp.headers.add("Contact", "<sip:bob@192.0.2.20:5070>")
    for value in forwarded.headers.get_all("Record-Route"):
        resp.headers.add("Record-Route", value)
    for header in extra:
        name, value = header.split(":", 1)
        resp.headers.push(name, value.strip())
    return resp


def offered_and_forwarded(p: Proxy, req: Request | None = None, now: float = 0.0) -> tuple[object, Request]:
    out = p.receive(req or invite(), CALLER, now)
    offered = [o for o in out if isinstance(o, CallOffered)]
    assert len(offered) == 1
    call = offered[0].call
    fwd = only_request(p.forward_call(call, now), "INVITE")
    assert isinstance(fwd.message, Request)
    return call, fwd.message


def test_an_initial_invite_gets_100_at_once_and_waits_for_the_application() -> None:
    p = proxy()
    out = p.receive(invite(), CALLER, 0.0)
    assert statuses(out) == [100]
    assert sent(out)[0].dest == CALLER
    (offer,) = [o for o in out if isinstance(o, CallOffered)]
    assert offer.call.state is CallState.OFFERED


def test_forwarding_record_routes_pushes_a_via_and_decrements_max_forwards() -> None:
    p = proxy()
    out = p.receive(invite(), CALLER, 0.0)
    call = next(o for o in out if isinstance(o, CallOffered)).call
    fwd = only_request(p.forward_call(call, 0.0), "INVITE")
    msg = fwd.message
    assert isinstance(msg, Request)
    assert fwd.dest == CALLEE  # the static next hop
    assert str(msg.uri) == f"sip:bob@{ME}:5060"  # the Request-URI is left alone
    assert msg.headers.get_all("Record-Route") == [f"<sip:{ME}:5060;lr;gwf={call.id}>"]
    top, second = msg.vias[0], msg.vias[1]
    assert top.host == ME and top.port == 5060 and (top.branch or "").startswith("z9hG4bK")
    assert second.branch == "z9hG4bK-caller1"
    assert msg.max_forwards == 69


def test_max_forwards_zero_is_refused_with_483_and_not_forwarded() -> None:
    p = proxy()
    out = p.receive(invite(max_forwards=0), CALLER, 0.0)
    assert statuses(out) == [483]
    assert not [o for o in out if isinstance(o, CallOffered)]


def test_a_request_carrying_our_own_via_for_the_same_request_is_a_loop() -> None:
    p = proxy()
    looped = invite()
    digest = loop_hash(looped)
    looped.headers.push("Via", f"SIP/2.0/UDP {ME}:5060;branch=z9hG4bK-gwf-x.{digest}")
    looped.headers.push("Via", "SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK-again")
    assert statuses(p.receive(looped, CALLER, 0.0)) == [482]


def test_a_spiral_through_us_with_another_route_is_not_a_loop() -> None:
    p = proxy()
    first = invite()
    digest = loop_hash(first)
    spiral = invite(f"Route: <sip:{ME}:5060;lr>", "Route: <sip:scscf.example.net;lr;odi=2>")
    spiral.headers.push("Via", f"SIP/2.0/UDP {ME}:5060;branch=z9hG4bK-gwf-x.{digest}")
    spiral.headers.push("Via", "SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK-again")
    out = p.receive(spiral, CALLER, 0.0)
    assert statuses(out) == [100]


def test_proxy_require_gets_420_naming_the_unsupported_extension() -> None:
    p = proxy()
    out = p.receive(invite("Proxy-Require: foo"), CALLER, 0.0)
    (t,) = sent(out)
    assert isinstance(t.message, Response) and t.message.status == 420
    assert t.message.headers.get("Unsupported") == "foo"


def test_our_route_is_removed_and_the_next_route_decides_the_next_hop() -> None:
    p = proxy()
    req = invite(f"Route: <sip:{ME}:5060;lr>", "Route: <sip:198.51.100.9:5080;transport=tcp;lr>")
    call, fwd = offered_and_forwarded(p, req)
    assert fwd.headers.get_all("Route") == ["<sip:198.51.100.9:5080;transport=tcp;lr>"]
    # the next hop is over TCP: our Via says so, and we record-route twice (RFC 5658)
    assert fwd.top_via.transport == "TCP"
    token = call.id  # type: ignore[attr-defined]
    assert fwd.headers.get_all("Record-Route") == [
        f"<sip:{ME}:5060;transport=tcp;lr;gwf={token}>",
        f"<sip:{ME}:5060;lr;gwf={token}>",
    ]


def test_a_strict_router_before_us_has_the_request_uri_restored_from_the_last_route() -> None:
    p = proxy()
    req = invite("Route: <sip:bob@192.0.2.20:5070>", uri=f"sip:{ME}:5060;lr")
    _, fwd = offered_and_forwarded(p, req)
    assert str(fwd.uri) == "sip:bob@192.0.2.20:5070"
    assert fwd.headers.get_all("Route") == []


def test_responses_go_upstream_without_our_via_100_absorbed_503_as_500() -> None:
    p = proxy()
    _, fwd = offered_and_forwarded(p)
    assert statuses(p.receive(make_response(fwd, 100), CALLEE, 0.1)) == []
    out = p.receive(callee_answer(fwd, 180), CALLEE, 0.2)
    (ringing,) = sent(out)
    assert ringing.dest == CALLER and isinstance(ringing.message, Response)
    assert [v.branch for v in ringing.message.vias] == ["z9hG4bK-caller1"]
    out = p.receive(callee_answer(fwd, 503), CALLEE, 0.3)
    assert 500 in statuses(out)
    assert any(isinstance(o, CallFailed) and o.status == 500 for o in out)


def test_every_2xx_is_forwarded_and_the_first_one_answers_the_call() -> None:
    p = proxy()
    _, fwd = offered_and_forwarded(p)
    ok = callee_answer(fwd, 200)
    out = p.receive(ok, CALLEE, 1.0)
    assert statuses(out) == [200]
    assert [type(o) for o in out if not isinstance(o, Transmit)] == [CallAnswered]
    out = p.receive(callee_answer(fwd, 200), CALLEE, 1.5)  # the callee retransmits until the ACK
    assert statuses(out) == [200]
    assert not [o for o in out if isinstance(o, CallAnswered)]


def test_the_ack_of_a_2xx_is_forwarded_statelessly_to_the_callee_contact() -> None:
    p = proxy()
    _, fwd = offered_and_forwarded(p)
    p.receive(callee_answer(fwd, 200), CALLEE, 1.0)
    ack = parse_message(
        (
            "ACK sip:bob@192.0.2.20:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK-ack\r\n"
            f"Route: <sip:{ME}:5060;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.net>;tag=alice1\r\n"
            "To: <sip:bob@example.net>;tag=bob1\r\nCall-ID: call-1\r\nCSeq: 1 ACK\r\n\r\n"
        ).encode()
    )
    (t,) = sent(p.receive(ack, CALLER, 1.1))
    assert t.dest == CALLEE and isinstance(t.message, Request) and t.message.method == "ACK"
    assert t.message.headers.get_all("Route") == [] and len(t.message.vias) == 2


def test_a_bye_from_the_callee_ends_the_call_and_reaches_the_caller() -> None:
    p = proxy()
    call, fwd = offered_and_forwarded(p)
    p.receive(callee_answer(fwd, 200), CALLEE, 1.0)
    bye = parse_message(
        (
            "BYE sip:alice@192.0.2.1:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20:5070;branch=z9hG4bK-bye\r\n"
            f"Route: <sip:{ME}:5060;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:bob@example.net>;tag=bob1\r\n"
            "To: <sip:alice@example.net>;tag=alice1\r\nCall-ID: call-1\r\nCSeq: 9 BYE\r\n\r\n"
        ).encode()
    )
    out = p.receive(bye, CALLEE, 5.0)
    (ended,) = [o for o in out if isinstance(o, CallEnded)]
    assert (ended.by, ended.method) == ("callee", "BYE")
    assert only_request(out, "BYE").dest == CALLER
    assert call.callee.cseq == 9  # type: ignore[attr-defined]


def test_end_call_sends_bye_to_both_legs_speaking_for_each_side() -> None:
    p = proxy()
    req = invite("Record-Route: <sip:pcscf.example.net;lr>")
    call, fwd = offered_and_forwarded(p, req)
    ok = callee_answer(fwd, 200)
    ok.headers.push("Record-Route", "<sip:192.0.2.30;lr>")  # a proxy between us and the callee
    p.receive(ok, CALLEE, 1.0)
    out = p.end_call(call, 10.0, 'Q.850;cause=16;text="credit exhausted"')  # type: ignore[arg-type]
    byes = [t for t in sent(out) if isinstance(t.message, Request)]
    assert len(byes) == 2
    to_callee, to_caller = byes
    assert isinstance(to_callee.message, Request) and isinstance(to_caller.message, Request)
    assert to_callee.dest == Addr("UDP", "192.0.2.30", 5060)  # via the callee-side proxy
    assert str(to_callee.message.uri) == "sip:bob@192.0.2.20:5070"
    assert to_callee.message.headers.get_all("Route") == ["<sip:192.0.2.30;lr>"]
    assert to_callee.message.from_.tag == "alice1" and to_callee.message.to.tag == "bob1"
    assert to_callee.message.cseq.number == 2  # after the caller's INVITE (CSeq 1)
    assert to_caller.dest == Addr("UDP", "pcscf.example.net", 5060)
    assert str(to_caller.message.uri) == "sip:alice@192.0.2.1:5062"
    assert to_caller.message.from_.tag == "bob1" and to_caller.message.to.tag == "alice1"
    assert to_caller.message.headers.get("Reason") == 'Q.850;cause=16;text="credit exhausted"'
    assert call.state is CallState.ENDED  # type: ignore[attr-defined]
    assert p.end_call(call, 11.0) == []  # type: ignore[arg-type]
    answered = p.receive(make_response(to_callee.message, 200), CALLEE, 10.1)
    assert next(o for o in answered if isinstance(o, TeardownAnswered)).status == 200


def test_cancel_before_forwarding_answers_487_for_the_invite() -> None:
    p = proxy()
    p.receive(invite(), CALLER, 0.0)
    cancel = parse_message(
        (
            f"CANCEL sip:bob@{ME}:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK-caller1\r\n"
            "Max-Forwards: 70\r\nFrom: Alice <sip:alice@example.net>;tag=alice1\r\nTo: Bob <sip:bob@example.net>\r\n"
            "Call-ID: call-1\r\nCSeq: 1 CANCEL\r\n\r\n"
        ).encode()
    )
    out = p.receive(cancel, CALLER, 0.5)
    assert statuses(out) == [200, 487]
    assert [(o.by, o.method) for o in out if isinstance(o, CallEnded)] == [("caller", "CANCEL")]


def test_cancel_after_a_provisional_goes_downstream_with_the_invite_branch() -> None:
    p = proxy()
    _, fwd = offered_and_forwarded(p)
    p.receive(callee_answer(fwd, 180), CALLEE, 0.2)
    cancel = parse_message(
        (
            f"CANCEL sip:bob@{ME}:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK-caller1\r\n"
            "Max-Forwards: 70\r\nFrom: Alice <sip:alice@example.net>;tag=alice1\r\nTo: Bob <sip:bob@example.net>\r\n"
            "Call-ID: call-1\r\nCSeq: 1 CANCEL\r\n\r\n"
        ).encode()
    )
    out = p.receive(cancel, CALLER, 0.5)
    assert statuses(out) == [200]
    down = only_request(out, "CANCEL")
    assert down.dest == CALLEE and isinstance(down.message, Request)
    assert down.message.top_via.branch == fwd.top_via.branch
    out = p.receive(callee_answer(fwd, 487), CALLEE, 0.6)
    assert statuses(out) == [487]


def test_a_2xx_that_crosses_the_cancel_gets_ack_and_bye_and_the_caller_487() -> None:
    p = proxy()
    _, fwd = offered_and_forwarded(p)
    p.receive(callee_answer(fwd, 180), CALLEE, 0.2)
    cancel = parse_message(
        (
            f"CANCEL sip:bob@{ME}:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK-caller1\r\n"
            "Max-Forwards: 70\r\nFrom: Alice <sip:alice@example.net>;tag=alice1\r\nTo: Bob <sip:bob@example.net>\r\n"
            "Call-ID: call-1\r\nCSeq: 1 CANCEL\r\n\r\n"
        ).encode()
    )
    p.receive(cancel, CALLER, 0.5)
    out = p.receive(callee_answer(fwd, 200), CALLEE, 0.6)
    assert only_request(out, "ACK").dest == CALLEE
    assert only_request(out, "BYE").dest == CALLEE
    assert statuses(out) == [487]
    assert not [o for o in out if isinstance(o, CallAnswered)]


def test_timer_c_cancels_a_call_that_rings_too_long() -> None:
    p = proxy(timer_c=181.0)
    _, fwd = offered_and_forwarded(p)
    p.receive(callee_answer(fwd, 180), CALLEE, 100.0)  # resets Timer C to 281
    assert p.timer(200.0) == []
    out = p.timer(281.0)
    assert only_request(out, "CANCEL").dest == CALLEE


def test_a_transport_error_towards_the_callee_answers_the_caller_500() -> None:
    p = proxy()
    _, fwd = offered_and_forwarded(p)
    out = p.transport_error(fwd, 0.1)
    assert statuses(out) == [500]
    assert [o.status for o in out if isinstance(o, CallFailed)] == [500]


def test_a_non_invite_that_times_out_downstream_gets_no_408() -> None:
    p = proxy(timers=TimerValues(t1=0.01))
    options = parse_message(
        b"OPTIONS sip:bob@example.net SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK-opt\r\n"
        b"Max-Forwards: 70\r\nFrom: <sip:alice@example.net>;tag=a\r\nTo: <sip:bob@example.net>\r\n"
        b"Call-ID: o-1\r\nCSeq: 1 OPTIONS\r\n\r\n"
    )
    assert only_request(p.receive(options, CALLER, 0.0), "OPTIONS").dest == CALLEE
    out = p.timer(10.0)
    assert statuses(out) == []  # RFC 4320 4.2
    assert p.layer.transactions == {}


def test_options_for_the_proxy_itself_are_answered_with_allow() -> None:
    p = proxy(next_hop=None)
    options = parse_message(
        (
            f"OPTIONS sip:{ME}:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK-opt\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:alice@example.net>;tag=a\r\nTo: <sip:gwf@example.net>\r\n"
            "Call-ID: o-2\r\nCSeq: 1 OPTIONS\r\n\r\n"
        ).encode()
    )
    (t,) = sent(p.receive(options, CALLER, 0.0))
    assert isinstance(t.message, Response) and t.message.status == 200
    assert "BYE" in (t.message.headers.get("Allow") or "")


def test_is_me_recognises_our_record_route() -> None:
    p = proxy()
    assert p.is_me(NameAddr.parse(f"<sip:{ME}:5060;lr>").uri)
    assert not p.is_me(Uri.parse(f"sip:{ME}:5070"))


def in_dialog(method: str, cseq: int, from_caller: bool = True) -> Request:
    if from_caller:
        start = (
            f"{method} sip:bob@192.0.2.20:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK-{method}\r\n"
        )
        parties = "From: <sip:alice@example.net>;tag=alice1\r\nTo: <sip:bob@example.net>;tag=bob1\r\n"
    else:
        start = (
            f"{method} sip:alice@192.0.2.1:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20:5070;branch=z9hG4bK-{method}\r\n"
        )
        parties = "From: <sip:bob@example.net>;tag=bob1\r\nTo: <sip:alice@example.net>;tag=alice1\r\n"
    msg = parse_message(
        (
            start
            + f"Route: <sip:{ME}:5060;lr>\r\nMax-Forwards: 70\r\n"
            + parties
            + f"Call-ID: call-1\r\nCSeq: {cseq} {method}\r\nContact: <sip:x@192.0.2.99>\r\n\r\n"
        ).encode()
    )
    assert isinstance(msg, Request)
    return msg


def test_re_invite_and_update_pass_through_the_dialog_both_ways_without_new_record_route() -> None:
    p = proxy()
    call, fwd = offered_and_forwarded(p)
    p.receive(callee_answer(fwd, 200), CALLEE, 1.0)
    reinvite = in_dialog("INVITE", 2)
    out = p.receive(reinvite, CALLER, 2.0)
    assert statuses(out) == [100]
    down = only_request(out, "INVITE")
    assert down.dest == CALLEE and isinstance(down.message, Request)
    assert down.message.headers.get_all("Record-Route") == [] and down.message.headers.get_all("Route") == []
    assert call.state is CallState.CONFIRMED  # type: ignore[attr-defined]
    back = p.receive(make_response(down.message, 200, to_tag="bob1"), CALLEE, 2.1)
    assert statuses(back) == [200] and sent(back)[0].dest == CALLER
    update = in_dialog("UPDATE", 5, from_caller=False)
    out = p.receive(update, CALLEE, 3.0)
    assert only_request(out, "UPDATE").dest == CALLER
    assert call.callee.cseq == 5  # type: ignore[attr-defined]
    assert not [o for o in out if isinstance(o, CallEnded)]


def test_a_dialog_that_passes_the_as_twice_is_two_calls_told_apart_by_our_record_route() -> None:
    scscf = Addr("UDP", "192.0.2.40", 5060)
    p = proxy(next_hop=None)
    first = invite(f"Route: <sip:{ME}:5060;lr>", "Route: <sip:192.0.2.40;lr;odi=1>")
    orig, fwd1 = offered_and_forwarded(p, first)
    assert fwd1.headers.get_all("Route") == ["<sip:192.0.2.40;lr;odi=1>"]
    # the S-CSCF sends it back for the terminating side: same Call-ID and tags, another Route
    again = fwd1.copy()
    again.headers.push("Record-Route", "<sip:192.0.2.40;lr>")  # the S-CSCF stays on the path too
    again.headers.set("Route", f"<sip:{ME}:5060;lr>")
    again.headers.add("Route", "<sip:192.0.2.40;lr;odi=2>")
    again.headers.push("Via", "SIP/2.0/UDP 192.0.2.40;branch=z9hG4bK-scscf2")
    term, fwd2 = offered_and_forwarded(p, again)
    assert term is not orig and len(fwd2.headers.get_all("Record-Route")) == 3
    answer = callee_answer(fwd2, 200)
    relayed = sent(p.receive(answer, CALLEE, 1.0))[0].message
    assert isinstance(relayed, Response)
    relayed.headers.pop("Via")  # the S-CSCF's own, on the way back
    p.receive(relayed, scscf, 1.1)
    # each passage speaks for the callee through what lies beyond it: the originating one via the S-CSCF
    assert orig.callee.route == ["<sip:192.0.2.40;lr>", f"<sip:{ME}:5060;lr;gwf={term.id}>"]  # type: ignore[attr-defined]
    assert term.callee.route == []  # type: ignore[attr-defined]
    assert term.caller.route == ["<sip:192.0.2.40;lr>", f"<sip:{ME}:5060;lr;gwf={orig.id}>"]  # type: ignore[attr-defined]
    # a BYE from the caller along the whole route set passes us twice; each passage ends its own call
    rr = [NameAddr.parse(v).uri for v in answer.headers.get_all("Record-Route")]
    bye = parse_message(
        (
            "BYE sip:bob@192.0.2.20:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK-bye\r\n"
            + "".join(f"Route: <{u}>\r\n" for u in reversed(rr))
            + "Max-Forwards: 70\r\nFrom: Alice <sip:alice@example.net>;tag=alice1\r\n"
            "To: <sip:bob@example.net>;tag=bob1\r\nCall-ID: call-1\r\nCSeq: 2 BYE\r\n\r\n"
        ).encode()
    )
    out = p.receive(bye, CALLER, 5.0)
    assert [o.call for o in out if isinstance(o, CallEnded)] == [orig]
    onward = only_request(out, "BYE")
    assert onward.dest == scscf and isinstance(onward.message, Request)
    back = onward.message.copy()
    assert back.headers.pop("Route") == "<sip:192.0.2.40;lr>"  # the S-CSCF's own entry
    back.headers.push("Via", "SIP/2.0/UDP 192.0.2.40;branch=z9hG4bK-scscf-bye")
    out = p.receive(back, scscf, 5.1)
    assert [o.call for o in out if isinstance(o, CallEnded)] == [term]
    assert only_request(out, "BYE").dest == CALLEE


def raw_invite(*replace: tuple[str, str], method: str = "INVITE", version: str = "SIP/2.0") -> bytes:
    """An INVITE as bytes, with header lines replaced (name -> whole new line; "" drops the line)."""
    lines = [
        f"{method} sip:bob@{ME}:5060 {version}",
        "Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK-caller1, SIP/2.0/UDP 192.0.2.99;branch=z9hG4bK-up",
        "Max-Forwards: 70",
        "From: Alice <sip:alice@example.net>;tag=alice1",
        "To: Bob <sip:bob@example.net>",
        "Call-ID: call-bad",
        f"CSeq: 1 {method}",
        "Contact: <sip:alice@192.0.2.1:5062>",
    ]
    for name, line in replace:
        lines = [line if existing.startswith(name + ":") else existing for existing in lines]
    return ("\r\n".join(x for x in lines if x) + "\r\n\r\n").encode()


def test_an_unparseable_request_is_answered_400_with_the_headers_a_response_copies() -> None:
    p = proxy()
    out = p.receive_data(raw_invite(("Contact", "Contact <sip:alice@192.0.2.1:5062>")), CALLER, 0.0)
    [reply] = sent(out)
    assert isinstance(reply.message, Response) and reply.message.status == 400
    assert reply.dest == Addr("UDP", "192.0.2.1", 5062)  # the top Via's sent-by (no rport asked)
    headers = reply.message.headers
    assert headers.get_all("Via") == [
        "SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK-caller1",
        "SIP/2.0/UDP 192.0.2.99;branch=z9hG4bK-up",
    ]
    assert headers.get("From") == "Alice <sip:alice@example.net>;tag=alice1"
    assert headers.get("To") == "Bob <sip:bob@example.net>"
    assert headers.get("Call-ID") == "call-bad"
    assert headers.get("CSeq") == "1 INVITE"
    assert parse_message(reply.message.to_bytes()).status == 400  # type: ignore[union-attr]
    assert (p.refused, p.dropped, p.calls) == (1, 0, {})  # nothing offered, nothing forwarded


def test_the_refusal_says_505_for_another_sip_version_and_follows_rport() -> None:
    p = proxy()
    data = raw_invite(("Via", "Via: SIP/2.0/UDP 192.0.2.1:5062;rport;branch=z9hG4bK-c2"), version="SIP/3.0")
    [reply] = sent(p.receive_data(data, Addr("UDP", "198.51.100.7", 40000), 0.0))
    assert reply.message.status == 505  # type: ignore[union-attr]
    assert reply.dest == Addr("UDP", "198.51.100.7", 40000)  # rport: back where it came from


def test_unanswerable_messages_are_dropped_acks_garbage_and_requests_without_call_id() -> None:
    p = proxy()
    broken_ack = raw_invite(("Contact", "Contact <sip:alice@192.0.2.1:5062>"), method="ACK")
    no_call_id = raw_invite(("Call-ID", ""), ("Contact", "Contact broken"))
    for data in (broken_ack, no_call_id, b"\x00\x01 not sip at all\r\n\r\n", b"SIP/2.0 200\r\n\r\n"):
        assert p.receive_data(data, CALLER, 0.0) == []
    assert (p.dropped, p.refused) == (4, 0)
