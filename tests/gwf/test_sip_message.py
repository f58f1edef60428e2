"""SIP message parsing and serialising (RFC 3261 sections 7, 18.3, 20 and 25): pure, no sockets."""

from __future__ import annotations

import pytest

from charging.gwf.sip.message import (
    NameAddr,
    Request,
    Response,
    SipParseError,
    StreamFramer,
    Uri,
    Via,
    make_response,
    parse_message,
)

HEAD = b"INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:b@x>\r\nFrom: <sip:a@x>;tag=1\r\n"

INVITE = (
    b"INVITE sip:bob@example.net SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK-1;rport, SIP/2.0/TCP p1.example.net;branch=z9hG4bK-0\r\n"
    b"Via: SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bK-x;received=2001:db8::9\r\n"
    b"Max-Forwards: 69\r\n"
    b'f: "Alice, A." <sip:alice@example.net>;tag=a1\r\n'
    b"t: Bob <sip:bob@example.net>\r\n"
    b"i: call-1@10.0.0.1\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"m: <sip:alice@10.0.0.1:5062;transport=udp>\r\n"
    b"Record-Route: <sip:p2.example.net;lr>, <sip:p1.example.net;lr>\r\n"
    b"Subject: folded\r\n"
    b" across lines\r\n"
    b"c: application/sdp\r\n"
    b"l: 4\r\n"
    b"\r\n"
    b"v=0\r\n"  # two octets beyond Content-Length are not part of the body
)


def test_compact_forms_become_long_names_and_list_headers_split_per_value() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    assert msg.method == "INVITE" and str(msg.uri) == "sip:bob@example.net"
    assert msg.call_id == "call-1@10.0.0.1"
    assert len(msg.headers.get_all("Via")) == 3
    assert msg.headers.get_all("Record-Route") == ["<sip:p2.example.net;lr>", "<sip:p1.example.net;lr>"]
    assert msg.headers.get("Subject") == "folded across lines"
    assert msg.headers.get("Content-Type") == "application/sdp"
    assert msg.body == b"v=0\r"  # Content-Length frames the body of a datagram too (RFC 3261 18.3)


def test_typed_views_of_via_from_cseq_and_ipv6() -> None:
    msg = parse_message(INVITE)
    top = msg.top_via
    assert (top.transport, top.host, top.port, top.branch) == ("UDP", "10.0.0.1", 5062, "z9hG4bK-1")
    assert "rport" in top.params and top.params["rport"] is None
    third = msg.vias[2]
    assert third.host == "[2001:db8::1]" and third.port == 5070 and third.params["received"] == "2001:db8::9"
    assert msg.vias[1].sent_by == ("p1.example.net", 5060)
    sender = msg.from_
    assert sender.display == '"Alice, A."' and sender.tag == "a1" and sender.uri.user == "alice"
    assert msg.to.tag is None
    assert (msg.cseq.number, msg.cseq.method) == (7, "INVITE")
    assert isinstance(msg, Request) and msg.max_forwards == 69


def test_serialising_writes_long_names_and_a_content_length_that_matches_the_body() -> None:
    msg = parse_message(INVITE)
    msg.body = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\n"
    again = parse_message(msg.to_bytes())
    assert isinstance(again, Request)
    assert again.body == msg.body
    assert again.headers.get("Content-Length") == str(len(msg.body))
    assert b"\r\nCall-ID: call-1@10.0.0.1\r\n" in msg.to_bytes()
    assert [str(v) for v in again.vias] == [str(v) for v in msg.vias]


def test_uri_forms_round_trip() -> None:
    for text in (
        "sip:alice@example.net",
        "sip:alice@example.net:5070;transport=tcp;lr",
        "sips:bob@[2001:db8::2]:5061",
        "sip:+4930123;user=phone@gw.example.net",
        "tel:+49-30-123;phone-context=example.net",
        "sip:example.net?subject=x",
    ):
        assert str(Uri.parse(text)) == text
    uri = Uri.parse("sip:Alice@EXAMPLE.net:5070;transport=TCP")
    assert uri.host == "example.net" and uri.user == "Alice" and uri.transport == "TCP"
    assert uri.address_of_record() == "sip:Alice@example.net"
    assert Uri.parse("tel:+4930123").address_of_record() == "tel:+4930123"


def test_addr_spec_parameters_belong_to_the_header_not_the_uri() -> None:
    addr = NameAddr.parse("sip:alice@example.net;tag=88")
    assert addr.tag == "88" and addr.uri.params == {}
    addr = NameAddr.parse("<sip:alice@example.net;user=phone>;tag=88")
    assert addr.tag == "88" and addr.uri.params == {"user": "phone"}


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (
            b"INVITE sip:b@x SIP/2.0\r\nTo: <sip:b@x>\r\nFrom: <sip:a@x>;tag=1\r\nCall-ID: 1\r\nCSeq: 1 INVITE\r\n\r\n",
            400,
        ),
        (b"INVITE sip:b@x SIP/3.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n", 505),
        (
            b"BYE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:b@x>\r\nFrom: <sip:a@x>;tag=1\r\n"
            b"Call-ID: 1\r\nCSeq: 1 INVITE\r\n\r\n",
            400,
        ),
        (b"SIP/2.0 2000 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n", 400),
        (
            HEAD + b"Call-ID: 1\r\nCSeq: x INVITE\r\n\r\n",
            400,
        ),
        (
            HEAD + b"Call-ID: 1\r\nCSeq: 1 INVITE\r\nContent-Length: 10\r\n\r\nshort",
            400,
        ),
    ],
    ids=["no-via", "version", "cseq-method", "status-code", "cseq-number", "body-short"],
)
def test_broken_messages_are_refused_with_the_status_that_fits(raw: bytes, status: int) -> None:
    with pytest.raises(SipParseError) as err:
        parse_message(raw)
    assert err.value.status == status


def test_stream_framer_splits_by_content_length_across_chunks_and_counts_keepalives() -> None:
    one = parse_message(INVITE)
    one.body = b"0123456789"
    data = b"\r\n\r\n" + one.to_bytes() + one.to_bytes()
    framer = StreamFramer()
    frames: list[bytes] = []
    for i in range(0, len(data), 7):
        frames += framer.feed(data[i : i + 7])
    assert len(frames) == 2
    assert all(parse_message(f).body == b"0123456789" for f in frames)
    assert framer.keepalives == 1


def test_stream_framer_refuses_an_endless_header_block() -> None:
    framer = StreamFramer()
    with pytest.raises(SipParseError):
        framer.feed(b"INVITE sip:x SIP/2.0\r\nX: " + b"a" * 70_000)


def test_a_response_copies_via_from_callid_cseq_and_tags_the_to() -> None:
    req = parse_message(INVITE)
    assert isinstance(req, Request)
    resp = make_response(req, 486, to_tag="t9")
    assert isinstance(resp, Response)
    assert resp.start_line() == "SIP/2.0 486 Busy Here"
    assert resp.headers.get_all("Via") == req.headers.get_all("Via")
    assert resp.to.tag == "t9" and resp.from_.tag == "a1"
    assert str(resp.cseq) == "7 INVITE"
    trying = make_response(req, 100, to_tag="t9")
    assert trying.to.tag is None  # 100 Trying never carries a To tag it made up


def test_via_response_target_honours_received_and_rport() -> None:
    via = Via.parse("SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK-1;received=192.0.2.7;rport=40000")
    assert via.response_target() == ("192.0.2.7", 40000)
    assert Via.parse("SIP/2.0/UDP host.example;branch=z9hG4bK-1").response_target() == ("host.example", 5060)
