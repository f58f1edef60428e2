"""Helpers of the trace tests: messages, crafted capture frames, a scripted client, the OCF setup of a trace."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dpkt  # type: ignore[import-untyped]

from charging.diameter import Message
from charging.diameter.node import DiameterNode
from tests.support.diameter import client_node, wait_available

CLIENT = "as.trace.test"
MSISDN = "34600000099"

# What a replay provisions before it starts: one tariff, one account with 10 EUR, its subscriber.
SETUP: dict[str, Any] = {
    "ocf": {
        "tariffs": [{"name": "voice", "unit": "time", "price": 2, "rating_group": 100, "effective_from": 0}],
        "accounts": [{"name": "carol", "balance": 1000}],
        "subscribers": [
            {"account": "carol", "name": "carol", "subscription_ids": [{"type": "END_USER_E164", "data": MSISDN}]}
        ],
    }
}
NEW_TARIFF: dict[str, Any] = {
    "ocf": {"tariffs": [{"name": "voice", "unit": "time", "price": 3, "rating_group": 100, "effective_from": 0}]}
}


def ccr(session: str, kind: str, number: int, *extra: tuple[str, Any], origin: str = CLIENT) -> Message:
    return Message.request(
        "CCR",
        4,
        [
            ("Session-Id", session),
            ("Origin-Host", origin),
            ("Origin-Realm", "trace.test"),
            ("Destination-Realm", "localdomain"),
            ("Auth-Application-Id", 4),
            ("Service-Context-Id", "32260@3gpp.org"),
            ("CC-Request-Type", kind),
            ("CC-Request-Number", number),
            ("Subscription-Id", {"Subscription-Id-Type": "END_USER_E164", "Subscription-Id-Data": MSISDN}),
            *extra,
        ],
    )


def mscc(requested: int | None = None, used: int | None = None) -> tuple[str, Any]:
    group: dict[str, Any] = {"Rating-Group": 100}
    if requested is not None:
        group["Requested-Service-Unit"] = {"CC-Time": requested}
    if used is not None:
        group["Used-Service-Unit"] = {"CC-Time": used}
    return ("Multiple-Services-Credit-Control", group)


def scur_call(session: str) -> list[Message]:
    """A prepaid call: 60 s granted, 60 s used and 60 s more granted, 30 s used at the end."""
    return [
        ccr(session, "INITIAL_REQUEST", 0, mscc(requested=60)),
        ccr(session, "UPDATE_REQUEST", 1, mscc(requested=60, used=60)),
        ccr(session, "TERMINATION_REQUEST", 2, mscc(used=30)),
    ]


def acr(session: str, kind: str, number: int, origin: str = "pcscf.trace.test") -> Message:
    return Message.request(
        "ACR",
        3,
        {
            "Session-Id": session,
            "Origin-Host": origin,
            "Origin-Realm": "trace.test",
            "Destination-Realm": "localdomain",
            "Accounting-Record-Type": kind,
            "Accounting-Record-Number": number,
            "Acct-Application-Id": 3,
            "Service-Context-Id": "32260@3gpp.org",
            "Service-Information": {
                "IMS-Information": {
                    "Event-Type": {"SIP-Method": "INVITE"},
                    "Role-Of-Node": "ORIGINATING_ROLE",
                    "Node-Functionality": "P_CSCF",
                    "Calling-Party-Address": f"sip:+{MSISDN}@trace.test",
                    "Called-Party-Address": "tel:+34911000003",
                    "IMS-Charging-Identifier": f"icid-{session}",
                }
            },
        },
    )


@contextlib.asynccontextmanager
async def client(port: int, host: str = CLIENT, acct: bool = False) -> AsyncIterator[DiameterNode]:
    node = client_node(
        port,
        host=host,
        realm="trace.test",
        server_host="target",
        auth_apps=frozenset({4}),
        acct_apps=frozenset({3}) if acct else frozenset(),
    )
    await node.start()
    try:
        await wait_available(node, "target")
        yield node
    finally:
        await node.stop()


async def send_all(node: DiameterNode, messages: list[Message]) -> list[Message]:
    return [await node.request(m, peer="target") for m in messages]


# -- crafted capture frames -------------------------------------------------------------------------------


def _ip(src: str, dst: str, proto: int, payload: Any) -> Any:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version == 6:
        ip6 = dpkt.ip6.IP6(src=a.packed, dst=b.packed, nxt=proto, hlim=64, data=payload)
        ip6.plen = len(bytes(payload))
        return ip6
    ip = dpkt.ip.IP(src=a.packed, dst=b.packed, p=proto, ttl=64, data=payload)
    ip.len = 20 + len(bytes(payload))
    return ip


def tcp_packet(src: str, sport: int, dst: str, dport: int, seq: int, flags: int, payload: bytes = b"") -> bytes:
    """An IP packet (v4 or v6, by the addresses) carrying one TCP segment."""
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq % (1 << 32), ack=1, flags=flags, win=65535, data=payload)
    return bytes(_ip(src, dst, 6, tcp))


def sctp_packet(src: str, sport: int, dst: str, dport: int, chunks: list[bytes], vtag: int = 7) -> bytes:
    body = dpkt.sctp.SCTP(sport=sport, dport=dport, vtag=vtag, data=b"")
    body.chunks = []
    raw = body.pack_hdr() + b"".join(chunks)
    return bytes(_ip(src, dst, 132, raw))


def data_chunk(tsn: int, payload: bytes, begin: bool = True, end: bool = True, stream: int = 0) -> bytes:
    flags = (0x02 if begin else 0) | (0x01 if end else 0)
    value = tsn.to_bytes(4, "big") + stream.to_bytes(2, "big") + b"\x00\x00" + (46).to_bytes(4, "big") + payload
    length = 4 + len(value)
    return bytes([0, flags]) + length.to_bytes(2, "big") + value + b"\x00" * (-length % 4)


def init_chunk() -> bytes:
    value = (7).to_bytes(4, "big") + (65535).to_bytes(4, "big") + (1).to_bytes(2, "big") * 2 + (1).to_bytes(4, "big")
    return bytes([1, 0]) + (4 + len(value)).to_bytes(2, "big") + value


def ethernet(packet: bytes, v6: bool = False) -> bytes:
    kind: int = dpkt.ethernet.ETH_TYPE_IP6 if v6 else dpkt.ethernet.ETH_TYPE_IP
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + kind.to_bytes(2, "big") + packet


def linux_sll2(packet: bytes, v6: bool = False) -> bytes:
    kind: int = dpkt.ethernet.ETH_TYPE_IP6 if v6 else dpkt.ethernet.ETH_TYPE_IP
    header = kind.to_bytes(2, "big") + b"\x00\x00" + (1).to_bytes(4, "big") + b"\x00\x01" + b"\x00\x06" + b"\x00" * 8
    return header + packet


def write_pcap(path: Path, frames: list[tuple[float, bytes]], link_type: int = 1, ng: bool = False) -> None:
    with open(path, "wb") as f:
        writer = (
            dpkt.pcapng.Writer(f, linktype=link_type, snaplen=65535)
            if ng
            else dpkt.pcap.Writer(f, linktype=link_type, snaplen=65535)
        )
        for ts, frame in frames:
            writer.writepkt(frame, ts=ts)


# -- tshark --------------------------------------------------------------------------------------------------

TSHARK = shutil.which("tshark")


def tshark_diameter(path: Path, port: int = 3868) -> list[list[str]]:
    """(command code, request flag) of each Diameter message as tshark decodes the capture, ``port`` as Diameter."""
    assert TSHARK is not None
    out = subprocess.run(
        [TSHARK, "-r", str(path), "-o", "tcp.reassemble_out_of_order:TRUE", "-Y", "diameter"]
        + (["-d", f"tcp.port=={port},diameter"] if port != 3868 else [])
        + ["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=;"]
        + ["-e", "diameter.cmd.code", "-e", "diameter.flags.request"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows: list[list[str]] = []
    for line in out.splitlines():
        columns = line.split("\t")
        codes = columns[0].split(";")
        requests = columns[1].split(";")
        rows += [[c, r] for c, r in zip(codes, requests, strict=False)]  # one frame may end several messages
    return rows


def start_capture(path: Path, port: int, fmt: str = "pcapng") -> subprocess.Popen[bytes]:
    """tshark capturing ``tcp port PORT`` on loopback into ``path``, once it is seen to capture."""
    assert TSHARK is not None
    args = [TSHARK, "-q", "-i", "lo", "-f", f"tcp port {port}", "-w", str(path)]
    if fmt == "pcap":
        args[1:1] = ["-F", "pcap"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_capturing(path, port, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def stop_capture(proc: subprocess.Popen[bytes], path: Path, port: int) -> None:
    """Stop once everything sent so far is in the file, as Ctrl-C does.

    The kernel hands packets to dumpcap in blocks, a block when it is full or about a
    second old, and a stop loses the block in hand: so one more connection is made
    (a fence) and the capture stops only once the fence's SYN is in the file.
    """
    _fence(path, port, proc)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _fence(path: Path, port: int, proc: subprocess.Popen[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        fence_port = sock.getsockname()[1]
    for _ in range(200):
        if proc.poll() is not None:
            return
        if _has_source_port(path, fence_port):
            return
        time.sleep(0.05)
    raise RuntimeError("tshark did not write the fence connection out")


def _has_source_port(path: Path, source_port: int) -> bool:
    from charging.trace.capture import CaptureError, read_capture

    try:
        return any(packet.src[1] == source_port for packet in read_capture(path))
    except CaptureError:
        return False  # a block still being written


def _wait_capturing(path: Path, port: int, proc: subprocess.Popen[bytes]) -> None:
    """Knock on the port until the knocks show up in the file (tshark says it captures before it does)."""
    size = 0
    for _ in range(400):
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"tshark exited: {err}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            pass
        if path.exists():
            size = os.path.getsize(path)
            if size > 1024:
                return
        time.sleep(0.05)
    raise RuntimeError(f"tshark did not start capturing into {path} (size {size})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
