"""pcap/pcapng captures → traces: dpkt reads, ``tcp``/``sctp`` reassemble, ``frames`` cuts messages.

``build_trace(packets, ...)`` is the pure part (packets in, a trace out) and takes
the creation time as an argument; ``import_capture(path, ...)`` reads the file.

Who is the client of a connection: the side that sent the SYN (or the SCTP INIT);
failing that, the side that sent the CER; failing that, the side that sent the
first accounting or credit-control request (or received the first ASR/RAR).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charging.diameter.constants import Command
from charging.diameter.errors import DiameterError
from charging.diameter.message import Message
from charging.trace.capture import CaptureStats, Packet, SctpPacket, TcpSegment, read_capture
from charging.trace.format import Endpoint, Header, MessageRecord, Sender, Trace, now_iso
from charging.trace.frames import CapturedMessage, ConnectionInfo, DiameterStreams
from charging.trace.sctp import SctpReassembler
from charging.trace.tcp import Address, StreamEvent, TcpReassembler

_CLIENT_COMMANDS = {Command.ACCOUNTING, Command.CREDIT_CONTROL, Command.SESSION_TERMINATION}
_SERVER_COMMANDS = {Command.ABORT_SESSION, Command.RE_AUTH}


@dataclass(slots=True)
class ImportReport:
    messages: int = 0
    connections: int = 0
    skipped_octets: int = 0
    retransmitted: int = 0
    gaps: int = 0
    capture: CaptureStats = field(default_factory=CaptureStats)

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "connections": self.connections,
            "skipped_octets": self.skipped_octets,
            "retransmitted_segments": self.retransmitted,
            "gaps": self.gaps,
            "frames": self.capture.frames,
            "tcp_segments": self.capture.tcp,
            "sctp_packets": self.capture.sctp,
            "undecodable_frames": self.capture.undecodable,
        }


def import_capture(
    path: str | Path,
    created: float,
    ports: Collection[int] = (),
    setup: dict[str, Any] | None = None,
) -> tuple[Trace, ImportReport]:
    """The Diameter messages of a capture file as a trace."""
    report = ImportReport()
    packets = read_capture(path, report.capture)
    trace = build_trace(packets, created, ports, report, setup)
    trace.header.source.update(
        {"file": os.path.basename(str(path)), "format": report.capture.format, "link_type": report.capture.link_type}
    )
    return trace, report


def build_trace(
    packets: Iterable[Packet],
    created: float,
    ports: Collection[int] = (),
    report: ImportReport | None = None,
    setup: dict[str, Any] | None = None,
) -> Trace:
    report = report if report is not None else ImportReport()
    tcp = TcpReassembler()
    sctp = SctpReassembler()
    streams = {"tcp": DiameterStreams("tcp"), "sctp": DiameterStreams("sctp")}
    captured: list[tuple[str, CapturedMessage]] = []
    last_t = 0.0

    def take(kind: str, events: list[StreamEvent]) -> None:
        for event in events:
            captured.extend((kind, m) for m in streams[kind].event(event))

    wanted = set(ports)
    for packet in packets:
        if wanted and packet.src[1] not in wanted and packet.dst[1] not in wanted:
            continue
        last_t = max(last_t, packet.t)
        if isinstance(packet, TcpSegment):
            take("tcp", tcp.segment(packet.t, packet.src, packet.dst, packet.seq, packet.flags, packet.payload))
        elif isinstance(packet, SctpPacket):
            take("sctp", sctp.chunks(packet.t, packet.src, packet.dst, packet.chunks))
    take("tcp", tcp.finish(last_t))
    take("sctp", sctp.finish(last_t))

    report.retransmitted = tcp.retransmitted + sctp.retransmitted
    report.skipped_octets = sum(s.skipped for s in streams.values())
    report.gaps = sum(s.gaps for s in streams.values())
    records = _records(captured, {k: s.connections for k, s in streams.items()})
    report.messages = len(records)
    report.connections = len({r.connection for r in records})
    start = min((m.t for _, m in captured), default=created)
    for record in records:
        record.t = max(0.0, record.t - start)
    source: dict[str, Any] = {"kind": "capture", **report.to_json()}
    header = Header(start=start, created=now_iso(created), source=source, setup=setup or {})
    return Trace(header, list(records))


def _records(
    captured: list[tuple[str, CapturedMessage]], connections: dict[str, dict[int, ConnectionInfo]]
) -> list[MessageRecord]:
    by_conn: dict[tuple[str, int], list[CapturedMessage]] = {}
    for kind, msg in captured:
        by_conn.setdefault((kind, msg.conn), []).append(msg)
    numbers: dict[tuple[str, int], int] = {}
    client_side: dict[tuple[str, int], int] = {}
    hosts: dict[tuple[str, int, int], str] = {}
    for key, msgs in by_conn.items():
        numbers[key] = len(numbers) + 1
        info = connections[key[0]][key[1]]
        client_side[key] = _client_side(info, msgs)
        for m in msgs:
            host = hosts.get((*key, m.side))
            if not host:
                hosts[(*key, m.side)] = _origin_host(m.raw)
    records: list[MessageRecord] = []
    for kind, m in captured:
        key = (kind, m.conn)
        info = connections[kind][m.conn]
        sender: Sender = "client" if m.side == client_side[key] else "server"
        peer = Endpoint(hosts.get((kind, m.conn, m.side), ""), _address(info.ends[m.side]))
        records.append(MessageRecord(m.t, numbers[key], sender, m.raw, peer))
    return records


def _client_side(info: ConnectionInfo, msgs: list[CapturedMessage]) -> int:
    if info.syn_seen:
        return 0
    for m in msgs:
        flags, code = m.raw[4], int.from_bytes(m.raw[5:8], "big")
        if flags & 0x80 and code == Command.CAPABILITIES_EXCHANGE:
            return m.side
    for m in msgs:
        flags, code = m.raw[4], int.from_bytes(m.raw[5:8], "big")
        if flags & 0x80 and code in _CLIENT_COMMANDS:
            return m.side
        if flags & 0x80 and code in _SERVER_COMMANDS:
            return 1 - m.side
    return 0


def _origin_host(raw: bytes) -> str:
    try:
        value = Message.decode(raw).get("Origin-Host", "")
    except DiameterError:
        return ""
    return value if isinstance(value, str) else ""


def _address(addr: Address) -> str:
    ip, port = addr
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
