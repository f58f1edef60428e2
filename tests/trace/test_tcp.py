"""TCP stream reassembly from captured segments (pure: no sockets, no files)."""

from __future__ import annotations

from charging.trace.tcp import ACK, FIN, RST, SYN, Closed, Data, Gap, Opened, StreamEvent, TcpReassembler

C = ("10.0.0.1", 40000)
S = ("10.0.0.2", 3868)
PSH_ACK = ACK | 0x08


def stream(events: list[StreamEvent], conn: int, side: int) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Data) and e.conn == conn and e.side == side)


def handshake(
    r: TcpReassembler, isn_c: int = 1000, isn_s: int = 9000, client: tuple[str, int] = C
) -> list[StreamEvent]:
    return r.segment(0.0, client, S, isn_c, SYN, b"") + r.segment(0.1, S, client, isn_s, SYN | ACK, b"")


def test_in_order_segments_become_one_stream_per_direction_and_fins_close_it() -> None:
    r = TcpReassembler()
    events = handshake(r)
    events += r.segment(1.0, C, S, 1001, PSH_ACK, b"hello ")
    events += r.segment(1.1, C, S, 1007, PSH_ACK, b"world")
    events += r.segment(1.2, S, C, 9001, PSH_ACK, b"answer")
    events += r.segment(2.0, C, S, 1012, FIN | ACK, b"")
    assert not any(isinstance(e, Closed) for e in events)
    events += r.segment(2.1, S, C, 9007, FIN | ACK, b"")
    opened = [e for e in events if isinstance(e, Opened)]
    assert opened == [Opened(1, 0.0, C, S, True)]
    assert stream(events, 1, 0) == b"hello world"
    assert stream(events, 1, 1) == b"answer"
    assert events[-1] == Closed(1, 2.1, "fin")


def test_out_of_order_segments_are_held_until_the_hole_is_filled() -> None:
    r = TcpReassembler()
    events = handshake(r)
    events += r.segment(1.0, C, S, 1011, PSH_ACK, b"third")
    events += r.segment(1.1, C, S, 1006, PSH_ACK, b"secnd")
    assert stream(events, 1, 0) == b""
    events += r.segment(1.2, C, S, 1001, PSH_ACK, b"first")
    assert stream(events, 1, 0) == b"firstsecndthird"
    assert [e.t for e in events if isinstance(e, Data)] == [1.2, 1.2, 1.2]


def test_retransmitted_and_overlapping_segments_deliver_each_octet_once() -> None:
    r = TcpReassembler()
    events = handshake(r)
    events += r.segment(1.0, C, S, 1001, PSH_ACK, b"abcdef")
    events += r.segment(1.1, C, S, 1001, PSH_ACK, b"abcdef")  # retransmission
    events += r.segment(1.2, C, S, 1004, PSH_ACK, b"defghi")  # overlaps by three octets
    events += r.segment(1.3, C, S, 1013, PSH_ACK, b"mno")  # ahead: held
    events += r.segment(1.4, C, S, 1009, PSH_ACK, b"ijklm")  # fills the hole and overlaps both sides
    assert stream(events, 1, 0) == b"abcdefghijklmno"
    assert r.retransmitted >= 3


def test_sequence_numbers_that_wrap_past_two_to_the_32_keep_the_order() -> None:
    r = TcpReassembler()
    isn = (1 << 32) - 5
    events = handshake(r, isn_c=isn)
    events += r.segment(1.0, C, S, (isn + 1 + 8) % (1 << 32), PSH_ACK, b"89ab")  # after the wrap, first
    events += r.segment(1.1, C, S, isn + 1, PSH_ACK, b"01234567")  # crosses the wrap
    assert stream(events, 1, 0) == b"0123456789ab"


def test_several_connections_interleaved_are_kept_apart_in_both_directions() -> None:
    r = TcpReassembler()
    c2 = ("10.0.0.3", 40001)
    events = handshake(r) + handshake(r, isn_c=50, client=c2)
    events += r.segment(1.0, c2, S, 51, PSH_ACK, b"B1")
    events += r.segment(1.1, C, S, 1001, PSH_ACK, b"A1")
    events += r.segment(1.2, S, c2, 9001, PSH_ACK, b"b1")
    events += r.segment(1.3, c2, S, 53, PSH_ACK, b"B2")
    events += r.segment(1.4, S, C, 9001, PSH_ACK, b"a1")
    assert [e.initiator for e in events if isinstance(e, Opened)] == [C, c2]
    assert (stream(events, 1, 0), stream(events, 1, 1)) == (b"A1", b"a1")
    assert (stream(events, 2, 0), stream(events, 2, 1)) == (b"B1B2", b"b1")


def test_a_capture_that_starts_inside_a_connection_takes_the_first_sender_as_side_zero() -> None:
    r = TcpReassembler()
    events = r.segment(5.0, S, C, 777, PSH_ACK, b"mid-stream")
    events += r.segment(5.1, C, S, 123, PSH_ACK, b"reply")
    assert events[0] == Opened(1, 5.0, S, C, False)
    assert stream(events, 1, 0) == b"mid-stream"
    assert stream(events, 1, 1) == b"reply"


def test_a_segment_the_capture_lost_leaves_a_gap_and_what_follows_is_still_delivered() -> None:
    r = TcpReassembler()
    events = handshake(r)
    events += r.segment(1.0, C, S, 1001, PSH_ACK, b"before")
    events += r.segment(1.2, C, S, 1017, PSH_ACK, b"after")  # octets 1007..1016 never captured
    events += r.finish(9.0)
    gaps = [e for e in events if isinstance(e, Gap)]
    assert gaps == [Gap(1, 0, 9.0, 10)]
    assert stream(events, 1, 0) == b"beforeafter"
    assert events[-1] == Closed(1, 9.0, "end of capture")


def test_a_reset_closes_and_a_new_syn_on_the_same_ports_opens_a_new_connection() -> None:
    r = TcpReassembler()
    events = handshake(r)
    events += r.segment(1.0, C, S, 1001, PSH_ACK, b"one")
    events += r.segment(1.1, S, C, 9001, RST, b"")
    events += r.segment(1.2, C, S, 1004, PSH_ACK, b"late")  # after the reset: dropped
    events += handshake(r, isn_c=70000)
    events += r.segment(2.0, C, S, 70001, PSH_ACK, b"two")
    assert [e for e in events if isinstance(e, Closed)] == [Closed(1, 1.1, "rst")]
    assert stream(events, 1, 0) == b"one"
    assert stream(events, 2, 0) == b"two"


def test_a_retransmitted_syn_does_not_open_a_second_connection() -> None:
    r = TcpReassembler()
    events = r.segment(0.0, C, S, 1000, SYN, b"")
    events += r.segment(1.0, C, S, 1000, SYN, b"")
    events += r.segment(1.1, S, C, 9000, SYN | ACK, b"")
    events += r.segment(1.2, C, S, 1001, PSH_ACK, b"x")
    assert len([e for e in events if isinstance(e, Opened)]) == 1
    assert stream(events, 1, 0) == b"x"
