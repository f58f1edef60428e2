"""The trace format: writing, reading, the readable AVP tree and its way back to octets (pure)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest

from charging.diameter import Message
from charging.trace.display import describe, message_from_tree
from charging.trace.format import (
    CheckRecord,
    Endpoint,
    Expectation,
    Header,
    MessageRecord,
    TraceFormatError,
    TraceWriter,
    parse_lines,
)


def rich_ccr() -> Message:
    msg = Message.request(
        "CCR",
        4,
        [
            ("Session-Id", "as.trace.test;1;1"),
            ("Origin-Host", "as.trace.test"),
            ("Origin-Realm", "trace.test"),
            ("Destination-Realm", "localdomain"),
            ("Auth-Application-Id", 4),
            ("Service-Context-Id", "32260@3gpp.org"),
            ("CC-Request-Type", "UPDATE_REQUEST"),
            ("CC-Request-Number", 1),
            ("Event-Timestamp", datetime(2026, 1, 1, 9, 0, 5, tzinfo=UTC)),
            ("Subscription-Id", {"Subscription-Id-Type": "END_USER_E164", "Subscription-Id-Data": "34600000099"}),
            ("Subscription-Id", {"Subscription-Id-Type": "END_USER_SIP_URI", "Subscription-Id-Data": "sip:c@t"}),
            (
                "Multiple-Services-Credit-Control",
                {"Rating-Group": 100, "Used-Service-Unit": {"CC-Time": 60, "CC-Input-Octets": 2**40}},
            ),
            ("User-Equipment-Info", {"User-Equipment-Info-Type": 0, "User-Equipment-Info-Value": b"\x01\x02\xff"}),
            ("Service-Information", {"IMS-Information": {"Served-Party-IP-Address": "192.0.2.7"}}),
        ],
    )
    msg.hop_by_hop, msg.end_to_end = 7, 8
    return Message.decode(msg.to_bytes())


def write(records: list[MessageRecord | CheckRecord], header: Header | None = None) -> str:
    out = io.StringIO()
    writer = TraceWriter(out, header or Header(1_767_225_600.0, "2026-01-01T00:00:00Z", {"kind": "test"}, {"ocf": {}}))
    for record in records:
        writer.write(record)
    return out.getvalue()


def test_the_readable_tree_shows_names_enums_times_addresses_octets_and_repeats() -> None:
    tree = describe(rich_ccr())
    assert tree["command"] == "CCR" and tree["flags"] == "RP--" and tree["hop_by_hop"] == 7
    avps = tree["avps"]
    assert avps["CC-Request-Type"] == "UPDATE_REQUEST"
    assert avps["Event-Timestamp"] == "2026-01-01T09:00:05Z"
    assert [s["Subscription-Id-Type"] for s in avps["Subscription-Id"]] == ["END_USER_E164", "END_USER_SIP_URI"]
    assert avps["Multiple-Services-Credit-Control"]["Used-Service-Unit"]["CC-Input-Octets"] == 2**40
    assert avps["User-Equipment-Info"]["User-Equipment-Info-Value"] == "0x0102ff"
    assert avps["Service-Information"]["IMS-Information"]["Served-Party-IP-Address"] == "192.0.2.7"
    json.dumps(tree)  # JSON-safe throughout


def test_a_message_written_only_as_its_tree_encodes_to_the_same_octets() -> None:
    msg = rich_ccr()
    tree = json.loads(json.dumps(describe(msg)))
    assert message_from_tree(tree).to_bytes() == msg.to_bytes()


def test_records_read_back_as_written() -> None:
    msg = rich_ccr()
    expect = Expectation({"Result-Code": 2001}, [{"record_type": "aSRecord"}], {"carol": {"balance": 880}})
    text = write(
        [
            MessageRecord(0.25, 3, "client", msg.to_bytes(), Endpoint("as.trace.test", "10.0.0.1:40000"), expect),
            CheckRecord(9.5, Expectation(None, [], None), "after the call"),
        ]
    )
    trace = parse_lines(text.splitlines())
    assert trace.header.start == 1_767_225_600.0 and trace.header.setup == {"ocf": {}}
    first, check = trace.records
    assert isinstance(first, MessageRecord) and isinstance(check, CheckRecord)
    assert (first.t, first.connection, first.sender, first.raw) == (0.25, 3, "client", msg.to_bytes())
    assert first.peer == Endpoint("as.trace.test", "10.0.0.1:40000")
    assert first.expect == expect and first.line == 2
    assert (check.t, check.name, check.expect.cdrs) == (9.5, "after the call", [])
    header = json.loads(text.splitlines()[0])
    assert header["start_time"] == "2026-01-01T00:00:00Z" and header["format"] == "charging-trace"


def test_a_record_without_hex_is_built_from_its_decoded_tree() -> None:
    msg = rich_ccr()
    line = json.loads(write([MessageRecord(1.0, 1, "client", msg.to_bytes())]).splitlines()[1])
    del line["hex"]
    header = write([]).splitlines()[0]
    trace = parse_lines([header, json.dumps(line)])
    assert trace.messages[0].raw == msg.to_bytes()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda lines: ["{not json", *lines[1:]], "line 1: not JSON"),
        (lambda lines: lines[1:], "line 1: the first record must be the header"),
        (lambda lines: [lines[0], lines[2], lines[1]], "line 3: t 1.0 is before the previous record's 2.0"),
        (lambda lines: [lines[0], lines[1].replace('"hex":"01', '"hex":"02')], "line 2: hex is not one Diameter"),
        (lambda lines: [lines[0].replace('"version":1', '"version":9'), *lines[1:]], "trace version 9"),
        (lambda lines: [lines[0], lines[1].replace('"sender":"client"', '"sender":"both"')], "line 2: sender"),
    ],
)
def test_a_broken_trace_is_refused_naming_the_line(change: object, error: str) -> None:
    msg = rich_ccr().to_bytes()
    lines = write([MessageRecord(1.0, 1, "client", msg), MessageRecord(2.0, 1, "client", msg)]).splitlines()
    with pytest.raises(TraceFormatError, match=error.replace("(", r"\(")):
        parse_lines(change(lines), "t.jsonl")  # type: ignore[operator]
