"""Diameter messages cut out of reassembled TCP streams and SCTP user messages (pure)."""

from __future__ import annotations

import itertools

from charging.trace.frames import CapturedMessage, DiameterStreams
from charging.trace.sctp import SctpReassembler
from charging.trace.tcp import ACK, SYN, Data, Gap, Opened, StreamEvent, TcpReassembler
from tests.trace.support import ccr, data_chunk, init_chunk

C = ("10.0.0.1", 40000)
S = ("10.0.0.2", 3868)


def requests(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        msg = ccr(f"as.trace.test;1;{i}", "EVENT_REQUEST", 0)
        msg.hop_by_hop, msg.end_to_end = 100 + i, 200 + i
        out.append(msg.to_bytes())
    return out


def frames_of(events: list[StreamEvent], streams: DiameterStreams | None = None) -> list[CapturedMessage]:
    streams = streams or DiameterStreams()
    out: list[CapturedMessage] = []
    for event in events:
        out += streams.event(event)
    return out


def test_messages_split_over_segments_and_sharing_segments_are_all_cut_out() -> None:
    a, b, c = requests(3)
    wire = a + b + c
    cuts = [0, 7, 30, len(a) + 3, len(a) + len(b) + len(c)]  # a in three pieces, b and c end in one segment
    r = TcpReassembler()
    events = r.segment(0.0, C, S, 0, SYN, b"")
    for n, (start, end) in enumerate(itertools.pairwise(cuts)):
        events += r.segment(1.0 + n, C, S, 1 + start, ACK, wire[start:end])
    got = frames_of(events)
    assert [m.raw for m in got] == [a, b, c]
    assert [m.t for m in got] == [3.0, 4.0, 4.0]  # each is stamped with the segment that completed it


def test_a_stream_joined_in_the_middle_is_searched_for_the_next_message_start() -> None:
    a, b = requests(2)
    streams = DiameterStreams()
    events: list[StreamEvent] = [Opened(1, 0.0, C, S, False), Data(1, 0, 1.0, a[25:] + b)]
    got = frames_of(events, streams)
    assert [m.raw for m in got] == [b]
    assert streams.skipped == len(a) - 25


def test_after_a_gap_the_broken_message_is_dropped_and_framing_resumes_at_the_next() -> None:
    a, b, c = requests(3)
    streams = DiameterStreams()
    events: list[StreamEvent] = [
        Opened(1, 0.0, C, S, True),
        Data(1, 0, 1.0, a + b[:30]),
        Gap(1, 0, 2.0, 40),
        Data(1, 0, 2.0, b[70:] + c),
    ]
    assert [m.raw for m in frames_of(events, streams)] == [a, c]
    assert streams.gaps == 1


def test_garbage_inside_a_stream_costs_only_the_garbage() -> None:
    a, b = requests(2)
    events: list[StreamEvent] = [Opened(1, 0.0, C, S, True), Data(1, 0, 1.0, a + b"\x07garbage!" * 5 + b)]
    streams = DiameterStreams()
    assert [m.raw for m in frames_of(events, streams)] == [a, b]
    assert streams.skipped == 45


def test_a_stream_that_is_not_diameter_gives_no_messages() -> None:
    http = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n" * 20
    assert frames_of([Opened(1, 0.0, C, S, True), Data(1, 0, 1.0, http)]) == []


def test_sctp_fragments_out_of_order_and_retransmitted_tsns_give_each_message_once() -> None:
    a, b = requests(2)
    r = SctpReassembler()
    events = r.chunks(0.0, C, S, [(1, 0, init_chunk()[4:])])
    pieces = [a[:40], a[40:90], a[90:]]

    def chunk(tsn: int, payload: bytes, begin: bool, end: bool) -> tuple[int, int, bytes]:
        raw = data_chunk(tsn, payload, begin, end)
        return (0, raw[1], raw[4 : int.from_bytes(raw[2:4], "big")])

    events += r.chunks(1.0, C, S, [chunk(12, pieces[2], False, True)])
    events += r.chunks(1.1, C, S, [chunk(10, pieces[0], True, False)])
    events += r.chunks(1.2, C, S, [chunk(10, pieces[0], True, False)])  # retransmitted
    events += r.chunks(1.3, C, S, [chunk(11, pieces[1], False, False), chunk(13, b, True, True)])  # bundled
    events += r.chunks(1.4, S, C, [chunk(500, b, True, True)])
    got = frames_of(events, DiameterStreams("sctp"))
    assert [(m.side, m.raw) for m in got] == [(0, a), (0, b), (1, b)]
    assert r.retransmitted == 1
