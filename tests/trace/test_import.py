"""pcap/pcapng import of crafted captures, checked against tshark's own reading of the same files (interop)."""

from __future__ import annotations

from pathlib import Path

import pytest

from charging.cli import main
from charging.diameter import Message
from charging.trace.format import MessageRecord
from charging.trace.importer import import_capture
from tests.trace.support import (
    TSHARK,
    acr,
    ccr,
    data_chunk,
    ethernet,
    init_chunk,
    linux_sll2,
    sctp_packet,
    tcp_packet,
    tshark_diameter,
    write_pcap,
)

SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (scripts/bootstrap.sh installs it)")


def cer(host: str) -> Message:
    return Message.request(
        "CER",
        0,
        [
            ("Origin-Host", host),
            ("Origin-Realm", "trace.test"),
            ("Host-IP-Address", "10.0.0.1"),
            ("Vendor-Id", 0),
            ("Product-Name", "crafted"),
            ("Auth-Application-Id", 4),
        ],
    )


def ids(msg: Message, n: int) -> Message:
    msg.hop_by_hop, msg.end_to_end = 0x100 + n, 0x900 + n
    return msg


def answer(req: Message, host: str) -> bytes:
    return req.answer([("Result-Code", 2001), ("Origin-Host", host), ("Origin-Realm", "trace.test")]).to_bytes()


def commands(records: list[MessageRecord]) -> list[tuple[int, str, str]]:
    return [(r.connection, r.sender, r.message.command_name) for r in records]


def tcp_capture(v6: bool = False) -> tuple[list[bytes], list[tuple[float, bytes]], list[tuple[int, str, str]]]:
    """Two connections; split, coalesced, retransmitted and reordered segments; frames as (time, IP packet)."""
    c1, c2, srv = ("2001:db8::1", "2001:db8::3", "2001:db8::2") if v6 else ("10.0.0.1", "10.0.0.3", "10.0.0.2")
    frames: list[tuple[float, bytes]] = []
    t = [1000.0]

    def seg(src: str, sport: int, dst: str, dport: int, seq: int, flags: int, payload: bytes = b"") -> None:
        t[0] += 0.001
        frames.append((t[0], tcp_packet(src, sport, dst, dport, seq, flags, payload)))

    req_cer = ids(cer("as.trace.test"), 1).to_bytes()
    cea = answer(Message.decode(req_cer), "ocs.trace.test")
    ccr1 = ids(ccr("as.trace.test;1;1", "INITIAL_REQUEST", 0), 2)
    ccr2 = ids(ccr("as.trace.test;1;2", "INITIAL_REQUEST", 0), 3)
    ccr3 = ids(ccr("as.trace.test;1;3", "EVENT_REQUEST", 0), 4)
    acr1 = ids(acr("pcscf.trace.test;1;1", "START_RECORD", 0), 5)
    r1, r2, r3, ra = ccr1.to_bytes(), ccr2.to_bytes(), ccr3.to_bytes(), acr1.to_bytes()
    a1, a2, a3 = (answer(m, "ocs.trace.test") for m in (ccr1, ccr2, ccr3))
    aa = answer(acr1, "cdf.trace.test")
    seg(c1, 40000, srv, 3868, 100, SYN)
    seg(srv, 3868, c1, 40000, 5000, SYN | ACK)
    seg(c1, 40000, srv, 3868, 101, ACK | PSH, req_cer[:30])  # CER in two segments
    seg(c1, 40000, srv, 3868, 101 + 30, ACK | PSH, req_cer[30:])
    seg(srv, 3868, c1, 40000, 5001, ACK | PSH, cea)
    n = 101 + len(req_cer)
    seg(c1, 40000, srv, 3868, n, ACK | PSH, r1 + r2)  # two requests in one segment
    seg(c2, 41000, srv, 3868, 7000, SYN)  # a second connection opens meanwhile
    seg(srv, 3868, c2, 41000, 8000, SYN | ACK)
    seg(c1, 40000, srv, 3868, n, ACK | PSH, r1 + r2)  # retransmitted
    m = 5001 + len(cea)
    seg(srv, 3868, c1, 40000, m, ACK | PSH, a1)
    seg(c2, 41000, srv, 3868, 7001, ACK | PSH, ra)
    seg(srv, 3868, c1, 40000, m + len(a1), ACK | PSH, a2)
    k = n + len(r1) + len(r2)
    seg(c1, 40000, srv, 3868, k + 50, ACK | PSH, r3[50:])  # the second half first
    seg(srv, 3868, c2, 41000, 8001, ACK | PSH, aa)
    seg(c1, 40000, srv, 3868, k, ACK | PSH, r3[:50])
    seg(srv, 3868, c1, 40000, m + len(a1) + len(a2), ACK | PSH, a3)
    seg(c1, 40000, srv, 3868, k + len(r3), FIN | ACK)
    expected = [
        (1, "client", "CER"),
        (1, "server", "CEA"),
        (1, "client", "CCR"),
        (1, "client", "CCR"),
        (1, "server", "CCA"),
        (2, "client", "ACR"),
        (1, "server", "CCA"),
        (2, "server", "ACA"),
        (1, "client", "CCR"),
        (1, "server", "CCA"),
    ]
    return [req_cer, cea, r1, r2, a1, ra, a2, aa, r3, a3], frames, expected


@needs_tshark
def test_pcap_of_two_connections_imports_like_tshark_reads_it(tmp_path: Path) -> None:
    raws, frames, expected = tcp_capture()
    path = tmp_path / "crafted.pcap"
    write_pcap(path, [(ts, ethernet(p)) for ts, p in frames])
    trace, report = import_capture(path, created=0.0)
    assert commands(trace.messages) == expected
    assert [r.raw for r in trace.messages] == raws
    assert report.retransmitted == 1
    assert trace.messages[0].peer.host == "as.trace.test" and trace.messages[0].peer.address == "10.0.0.1:40000"
    assert trace.messages[1].peer.host == "ocs.trace.test"
    assert trace.header.start == pytest.approx(1000.003)
    assert trace.messages[0].t == 0.0
    ours = [[str(r.code), "1" if r.is_request else "0"] for r in trace.messages]
    assert tshark_diameter(path) == ours


@needs_tshark
def test_pcapng_with_linux_cooked_v2_and_ipv6_imports_like_tshark_reads_it(tmp_path: Path) -> None:
    raws, frames, expected = tcp_capture(v6=True)
    path = tmp_path / "crafted.pcapng"
    write_pcap(path, [(ts, linux_sll2(p, v6=True)) for ts, p in frames], link_type=276, ng=True)
    trace, report = import_capture(path, created=0.0)
    assert report.capture.format == "pcapng"
    assert commands(trace.messages) == expected
    assert [r.raw for r in trace.messages] == raws
    assert trace.messages[0].peer.address == "[2001:db8::1]:40000"
    ours = [[str(r.code), "1" if r.is_request else "0"] for r in trace.messages]
    assert tshark_diameter(path) == ours


def test_ip_fragments_of_a_segment_are_put_back_together(tmp_path: Path) -> None:
    import dpkt  # type: ignore[import-untyped]

    msg = ids(ccr("as.trace.test;1;9", "EVENT_REQUEST", 0), 9).to_bytes()
    syn = tcp_packet("10.0.0.1", 40000, "10.0.0.2", 3868, 0, SYN)
    whole = dpkt.ip.IP(tcp_packet("10.0.0.1", 40000, "10.0.0.2", 3868, 1, ACK | PSH, msg))
    body = bytes(whole.data)
    frags = []
    for offset, piece, more in ((0, body[:64], True), (64, body[64:], False)):
        ip = dpkt.ip.IP(src=whole.src, dst=whole.dst, p=6, id=77, ttl=64, data=piece)
        ip.mf = int(more)
        ip.offset = offset // 8
        ip.len = 20 + len(piece)
        frags.append(bytes(ip))
    path = tmp_path / "fragments.pcap"
    write_pcap(path, [(1.0, ethernet(syn)), (1.1, ethernet(frags[1])), (1.2, ethernet(frags[0]))])
    trace, report = import_capture(path, created=0.0)
    assert [r.raw for r in trace.messages] == [msg]
    assert report.capture.fragments == 2


@needs_tshark
def test_sctp_fragmented_and_bundled_data_chunks_import_like_tshark_reads_them(tmp_path: Path) -> None:
    req = ids(ccr("as.trace.test;1;7", "INITIAL_REQUEST", 0), 7)
    r, a = req.to_bytes(), answer(req, "ocs.trace.test")
    dwr = ids(Message.request("DWR", 0, {"Origin-Host": "as.trace.test", "Origin-Realm": "trace.test"}), 8).to_bytes()
    c, s = "10.0.0.1", "10.0.0.2"
    frames = [
        (1.0, sctp_packet(c, 40000, s, 3868, [init_chunk()])),
        (1.1, sctp_packet(c, 40000, s, 3868, [data_chunk(1, r[:60], True, False)])),
        (1.2, sctp_packet(c, 40000, s, 3868, [data_chunk(2, r[60:], False, True), data_chunk(3, dwr)])),
        (1.3, sctp_packet(c, 40000, s, 3868, [data_chunk(3, dwr)])),  # retransmitted
        (1.4, sctp_packet(s, 3868, c, 40000, [data_chunk(900, a)])),
    ]
    path = tmp_path / "sctp.pcap"
    write_pcap(path, [(ts, ethernet(p)) for ts, p in frames])
    trace, report = import_capture(path, created=0.0)
    assert [(r.sender, r.message.command_name) for r in trace.messages] == [
        ("client", "CCR"),
        ("client", "DWR"),
        ("server", "CCA"),
    ]
    assert [m.raw for m in trace.messages] == [r, dwr, a]
    assert report.retransmitted == 1
    assert [row[0] for row in tshark_diameter(path)] == ["272", "280", "272"]


def test_a_file_that_is_no_capture_is_refused_with_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a capture\n")
    assert main(["trace", "import", str(path), "-o", str(tmp_path / "out.jsonl")]) == 2
    assert "not a pcap or pcapng capture" in capsys.readouterr().err
