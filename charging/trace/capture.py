"""Packets out of pcap and pcapng files (as tcpdump, tshark and dumpcap write them), read with dpkt.

dpkt reads the file formats and the protocol headers; this module picks out the
TCP segments and SCTP chunks, with their addresses and capture times, for the
reassemblers.  Link layers: Ethernet (VLAN tags included), Linux cooked v1 and v2
(``-i any``), BSD loopback, raw IPv4/IPv6.  IPv4 fragments are put back together.

A pcapng file is read with the link type of its first interface: a capture across
interfaces of different link types is not supported (dpkt reads only the first
interface description).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import dpkt  # type: ignore[import-untyped]

from charging.trace.tcp import Address

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_RAW_ALT = (12, 14)  # DLT_RAW on some BSDs
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

PROTO_TCP = 6
PROTO_SCTP = 132


class CaptureError(ValueError):
    """A capture file that cannot be read."""


@dataclass(frozen=True, slots=True)
class TcpSegment:
    t: float
    src: Address
    dst: Address
    seq: int
    flags: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class SctpPacket:
    t: float
    src: Address
    dst: Address
    chunks: list[tuple[int, int, bytes]]  # (type, flags, value after the chunk header)


Packet = TcpSegment | SctpPacket


@dataclass(slots=True)
class CaptureStats:
    frames: int = 0
    tcp: int = 0
    sctp: int = 0
    other: int = 0  # neither TCP nor SCTP (or an unsupported link layer)
    undecodable: int = 0  # truncated or malformed frames
    fragments: int = 0  # IPv4 fragments seen (reassembled where complete)
    link_type: int = 0
    format: str = ""


@dataclass(slots=True)
class _Fragments:
    pieces: dict[int, bytes] = field(default_factory=dict)  # offset in octets -> data
    total: int | None = None  # known once the last fragment is in


def read_capture(path: str | Path, stats: CaptureStats | None = None) -> Iterator[Packet]:
    """TCP segments and SCTP packets of a pcap or pcapng file, in file order."""
    stats = stats if stats is not None else CaptureStats()
    try:
        with open(path, "rb") as stream:
            yield from _packets(stream, str(path), stats)
    except OSError as exc:
        raise CaptureError(f"{path}: {exc.strerror or exc}") from None


def _packets(stream: BinaryIO, name: str, stats: CaptureStats) -> Iterator[Packet]:
    magic = stream.read(4)
    stream.seek(0)
    try:
        if magic == b"\x0a\x0d\x0d\x0a":
            reader = dpkt.pcapng.Reader(stream)
            stats.format = "pcapng"
        else:
            reader = dpkt.pcap.Reader(stream)
            stats.format = "pcap"
    except (ValueError, dpkt.Error) as exc:
        raise CaptureError(f"{name}: not a pcap or pcapng capture ({exc})") from None
    link_type = int(reader.datalink())
    stats.link_type = link_type
    decoder = FrameDecoder(link_type, stats)
    try:
        for ts, frame in reader:
            yield from decoder.frame(float(ts), bytes(frame))
    except (ValueError, dpkt.Error, EOFError) as exc:
        raise CaptureError(f"{name}: the capture is cut short or damaged ({exc})") from None


class FrameDecoder:
    """Captured frames of one link type → TCP segments and SCTP packets."""

    def __init__(self, link_type: int, stats: CaptureStats | None = None) -> None:
        self.link_type = link_type
        self.stats = stats if stats is not None else CaptureStats()
        self._fragments: dict[tuple[bytes, bytes, int, int], _Fragments] = {}

    def frame(self, t: float, frame: bytes) -> list[Packet]:
        self.stats.frames += 1
        try:
            ip = self._network(frame)
        except (dpkt.Error, ValueError, IndexError, KeyError):
            self.stats.undecodable += 1
            return []
        if ip is None:
            self.stats.other += 1
            return []
        try:
            return self._transport(t, ip)
        except (dpkt.Error, ValueError, IndexError, KeyError):
            self.stats.undecodable += 1
            return []

    def _network(self, frame: bytes) -> object | None:
        lt = self.link_type
        if lt == LINKTYPE_ETHERNET:
            layer: object = dpkt.ethernet.Ethernet(frame).data
        elif lt in (LINKTYPE_NULL, LINKTYPE_LOOP):
            layer = dpkt.loopback.Loopback(frame).data
        elif lt == LINKTYPE_LINUX_SLL:
            layer = dpkt.sll.SLL(frame).data
        elif lt == LINKTYPE_LINUX_SLL2:
            layer = dpkt.sll2.SLL2(frame).data
        elif lt in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, *LINKTYPE_RAW_ALT):
            if not frame:
                return None
            layer = dpkt.ip.IP(frame) if frame[0] >> 4 == 4 else dpkt.ip6.IP6(frame)
        else:
            return None
        return layer if isinstance(layer, dpkt.ip.IP | dpkt.ip6.IP6) else None

    def _transport(self, t: float, ip: object) -> list[Packet]:
        if isinstance(ip, dpkt.ip.IP):
            if ip.mf or ip.offset:
                self.stats.fragments += 1
                payload = self._defragment(ip)
                if payload is None:
                    return []
                body: object = _parse_transport(ip.p, payload)
            else:
                body = ip.data
            proto = ip.p
        else:
            assert isinstance(ip, dpkt.ip6.IP6)
            body = ip.data
            proto = ip.p
        src_ip = str(ipaddress.ip_address(bytes(ip.src)))
        dst_ip = str(ipaddress.ip_address(bytes(ip.dst)))
        if proto == PROTO_TCP and isinstance(body, dpkt.tcp.TCP):
            self.stats.tcp += 1
            return [TcpSegment(t, (src_ip, body.sport), (dst_ip, body.dport), body.seq, body.flags, bytes(body.data))]
        if proto == PROTO_SCTP and isinstance(body, dpkt.sctp.SCTP):
            self.stats.sctp += 1
            chunks = [(int(c.type), int(c.flags), bytes(c.data)) for c in body.chunks]
            return [SctpPacket(t, (src_ip, body.sport), (dst_ip, body.dport), chunks)]
        self.stats.other += 1
        return []

    def _defragment(self, ip: object) -> bytes | None:
        assert isinstance(ip, dpkt.ip.IP)
        key = (bytes(ip.src), bytes(ip.dst), int(ip.id), int(ip.p))
        entry = self._fragments.setdefault(key, _Fragments())
        offset = int(ip.offset) * 8
        data = bytes(ip.data)  # a first fragment's TCP header, as dpkt parsed it, packs back to its octets
        entry.pieces.setdefault(offset, data)
        if not ip.mf:
            entry.total = offset + len(data)
        if entry.total is None:
            return None
        joined = bytearray()
        for start in sorted(entry.pieces):
            piece = entry.pieces[start]
            if start > len(joined):
                return None  # a hole: wait for the missing fragment
            joined[start : start + len(piece)] = piece
        if len(joined) < entry.total:
            return None
        del self._fragments[key]
        return bytes(joined[: entry.total])


def _parse_transport(proto: int, payload: bytes) -> object:
    if proto == PROTO_TCP:
        return dpkt.tcp.TCP(payload)
    if proto == PROTO_SCTP:
        return dpkt.sctp.SCTP(payload)
    return payload
