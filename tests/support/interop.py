"""Independent Diameter implementations for interop tests: freeDiameterd as a peer, tshark as a decoder.

``FreeDiameterd`` runs Debian's ``freeDiameterd`` as a child process with a configuration generated in a
folder of its own, and reads its log to learn what it did::

    async with FreeDiameterd(tmp_path, connect=[ConnectPeer("ours.interop.test", node.port)]) as fd:
        await fd.wait_for(fd.opened("ours.interop.test"))

``LoopbackCapture`` records the traffic of one TCP port on the loopback interface with tshark, and
``decode_diameter`` reads a capture back through tshark's Diameter dissector, one ``DecodedMessage`` per
Diameter message found.  ``write_pcap`` is the fallback when nothing can capture: it wraps messages in fake
IPv4/TCP headers so that tshark decodes them all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from charging.diameter import Message
from charging.diameter.node import DiameterNode
from charging.diameter.peer import Peer

FREEDIAMETERD = shutil.which("freeDiameterd")
TSHARK = shutil.which("tshark")

# Debian installs the extensions here; an upstream build puts them under the multiarch folder.
_EXTENSION_DIRS = (Path("/usr/lib/freeDiameter"), Path("/usr/lib/x86_64-linux-gnu/freeDiameter"))

# The dictionary extensions, in the order their dependencies ask for: with them freeDiameterd parses
# (and its message dump names) the credit-control and 3GPP AVPs of what it receives and relays.
DICTIONARIES = ("dict_nasreq.fdx", "dict_rfc5777.fdx", "dict_dcca.fdx", "dict_dcca_3gpp.fdx")

# dbg_msg_dumps.fdx: every message received and sent (0x0040), every routing decision (0x0400) and
# every error (0x0004) on one log line each, connections in tree view (0x8000).  The tree bit also
# avoids a spurious "fd_hook_unregister" error that the extension logs at exit without it.
_DUMP_LEVEL = "0x8444"

# RFC 3539 3.4.1 asks Tw to be at least 6 s; freeDiameterd refuses a global TwTimer below 6 and adds
# a random -2..+2 s to every watchdog interval.
MIN_TW_TIMER = 6


def extension_dir() -> Path | None:
    for folder in _EXTENSION_DIRS:
        if (folder / "dict_dcca.fdx").exists():
            return folder
    return None


def free_port() -> int:
    """A TCP port nobody listens on right now (on every address, as freeDiameterd binds them all)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path  # the certificate authority that signed ``cert``, and the only one trusted


def self_signed_certificate(folder: Path, common_name: str) -> TlsFiles:
    """freeDiameterd will not start without TLS credentials, even when every peer speaks plain TCP."""
    cert, key = folder / f"{common_name}.cert.pem", folder / f"{common_name}.key.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={common_name}",
             "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return TlsFiles(cert, key, cert)


def certificate_authority(folder: Path, *common_names: str) -> dict[str, TlsFiles]:
    """A test CA and one certificate it signs for each name (a Diameter identity)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=interop-test-ca",
             "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    issued = {}
    for name in common_names:
        cert, key, csr = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
                 "-days", "2", "-out", str(cert))  # fmt: skip
        issued[name] = TlsFiles(cert, key, ca)
    return issued


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass(frozen=True, slots=True)
class ConnectPeer:
    """A peer freeDiameterd dials itself (a ``ConnectPeer`` line): plain TCP, or TLS from the first octet."""

    identity: str
    port: int
    address: str = "127.0.0.1"
    tls: bool = False


class FreeDiameterd:
    """freeDiameterd as a child process: a generated configuration, a free port, a log to read.

    It always advertises the Relay application (0xFFFFFFFF), which RFC 6733 5.3 counts as common with
    every application, so our nodes find a common application whatever they serve.  Peers it should
    accept without dialing them are whitelisted by identity with ``acl_wl.fdx``: over plain TCP
    (``ALLOW_IPSEC``) unless ``allow_without_tls`` is false, when only a TLS connection is admitted.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        identity: str = "fd.interop.test",
        realm: str = "interop.test",
        connect: Sequence[ConnectPeer] = (),
        allow: Sequence[str] = (),
        allow_without_tls: bool = True,
        tw_timer: int = MIN_TW_TIMER,
        port: int | None = None,
        tls_port: int | None = None,
        credentials: TlsFiles | None = None,
    ) -> None:
        if tw_timer < MIN_TW_TIMER:
            raise ValueError(f"freeDiameterd refuses a TwTimer below {MIN_TW_TIMER} s")
        self.workdir = workdir
        self.identity = identity
        self.realm = realm
        self.connect = list(connect)
        self.allow = list(allow)
        self.allow_without_tls = allow_without_tls
        self.tw_timer = tw_timer
        self.port = port if port is not None else free_port()
        self.tls_port = tls_port  # RFC 6733 TLS-from-the-start listener (SecPort); None: none
        self.credentials = credentials
        self.config_path = workdir / "freeDiameter.conf"
        self.log_path = workdir / "freeDiameterd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    # -- configuration ------------------------------------------------------------------------
    def config_text(self, tls: TlsFiles, extensions: Path) -> str:
        # No ListenOn: freeDiameter 1.2.1 ignores a loopback address there ("Local endpoints: Default")
        # and listens on every address anyway; on a free port of its own that reaches nothing else.
        lines = [
            f'Identity = "{self.identity}";',
            f'Realm = "{self.realm}";',
            f"Port = {self.port};",
            f"SecPort = {self.tls_port or 0};",  # 0: no listener for TLS-from-the-start connections
            "No_SCTP;",
            "No_IPv6;",
            f"TwTimer = {self.tw_timer};",
            f'TLS_Cred = "{tls.cert}", "{tls.key}";',
            f'TLS_CA = "{tls.ca}";',
        ]
        lines += [f'LoadExtension = "{extensions / name}";' for name in DICTIONARIES]
        if self.allow:
            acl = self.workdir / "acl_wl.conf"
            # ALLOW_IPSEC: plain TCP is accepted; without it acl_wl admits the peer over TLS only.
            flag = "ALLOW_IPSEC " if self.allow_without_tls else ""
            acl.write_text("".join(f"{flag}{host}\n" for host in self.allow))
            lines.append(f'LoadExtension = "{extensions / "acl_wl.fdx"}" : "{acl}";')
        lines.append(f'LoadExtension = "{extensions / "dbg_msg_dumps.fdx"}" : "{_DUMP_LEVEL}";')
        for peer in self.connect:
            plain = "" if peer.tls else " No_TLS;"
            lines.append(
                f'ConnectPeer = "{peer.identity}" {{ ConnectTo = "{peer.address}"; Port = {peer.port};{plain} }};'
            )
        return "\n".join(lines) + "\n"

    # -- life cycle -----------------------------------------------------------------------------
    async def start(self, timeout: float = 10.0) -> None:
        if FREEDIAMETERD is None:
            raise RuntimeError("freeDiameterd is not installed (scripts/bootstrap.sh --system)")
        extensions = extension_dir()
        if extensions is None:
            raise RuntimeError("freeDiameter extensions are not installed (scripts/bootstrap.sh --system)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        tls = self.credentials or self_signed_certificate(self.workdir, self.identity)
        self.config_path.write_text(self.config_text(tls, extensions))
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [FREEDIAMETERD, "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        try:
            await self.wait_for(r"freeDiameterd daemon initialized", timeout)
        except BaseException:
            await self.stop()
            raise

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM: freeDiameterd sends DPR to its open peers, waits for the DPAs and exits."""
        proc = self.process
        if proc is None:
            return self.returncode if self.returncode is not None else 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
        self.returncode = proc.wait()
        self.process = None
        return self.returncode

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- the log ----------------------------------------------------------------------------------
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def errors(self) -> list[str]:
        """Lines logged at ERROR or FATAL level, the shutdown notice excepted."""
        return [
            line
            for line in self.log().splitlines()
            if re.search(r"\b(ERROR|FATAL!)\b", line) and "Initiating freeDiameter shutdown sequence" not in line
        ]

    async def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The first match of ``pattern`` in the log, waiting for it to be written."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = compiled.search(self.log())
            if found is not None:
                return found
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"freeDiameterd exited ({self.process.returncode}) before /{pattern}/:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"freeDiameterd never logged /{pattern}/ within {timeout} s:\n{self.tail()}")
            await asyncio.sleep(0.05)

    def logged(self, pattern: str) -> bool:
        return re.search(pattern, self.log()) is not None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # Patterns for what freeDiameterd logs (libfdcore's state changes, dbg_msg_dumps' message lines).
    @staticmethod
    def opened(peer: str) -> str:
        return rf"'STATE_\w+'\s+-> 'STATE_OPEN'\s+'{re.escape(peer)}'"

    @staticmethod
    def received(peer: str, command: str) -> str:
        """``command`` is the full name freeDiameter prints, such as ``Device-Watchdog-Request``."""
        return rf"RCV from '{re.escape(peer)}': {re.escape(command)}\(\d+\)"

    @staticmethod
    def sent(peer: str, command: str) -> str:
        return rf"SND to '{re.escape(peer)}': {re.escape(command)}\(\d+\)"


# -- tshark --------------------------------------------------------------------------------------------


class LoopbackCapture:
    """tshark recording one TCP port on ``lo`` into a pcapng file, from ``start()`` to ``stop()``."""

    def __init__(self, port: int, path: Path, interface: str = "lo") -> None:
        self.port = port
        self.path = path
        self.interface = interface
        self.probe_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.stderr_path = path.with_suffix(".stderr")

    async def start(self, timeout: float = 15.0) -> None:
        """Returns once packets reach the file; raises ``CaptureUnavailable`` if tshark cannot capture."""
        if TSHARK is None:
            raise CaptureUnavailable("tshark is not installed")
        capture_filter = f"tcp port {self.port} or udp port {self.probe_port}"
        with self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [TSHARK, "-n", "-i", self.interface, "-f", capture_filter, "-w", str(self.path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + timeout
        while "Capturing on" not in self._stderr():
            if self.process.poll() is not None or time.monotonic() > deadline:
                await self.stop()
                raise CaptureUnavailable(f"tshark cannot capture on {self.interface}: {self._stderr().strip()}")
            await asyncio.sleep(0.02)
        # tshark announces the capture a moment before its filter sees packets, and writes the file in
        # batches: once a probe of ours is in the file, every later packet will be too.
        await self._probe(deadline)

    async def stop(self, timeout: float = 10.0) -> None:
        """Waits until everything sent so far is in the file, then SIGINT: tshark exits."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(CaptureUnavailable):
                await self._probe(time.monotonic() + timeout)
            proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
        proc.wait()
        self.process = None

    async def _probe(self, deadline: float) -> None:
        """Send UDP datagrams to the probe port until the capture file grows."""
        size = self._size()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while self._size() <= size:
                if time.monotonic() > deadline or (self.process is not None and self.process.poll() is not None):
                    raise CaptureUnavailable(f"no packet reached {self.path}: {self._stderr().strip()}")
                sock.sendto(b"probe", ("127.0.0.1", self.probe_port))
                await asyncio.sleep(0.05)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class CaptureUnavailable(RuntimeError):
    pass


@dataclass(slots=True)
class DecodedAvp:
    """One AVP as tshark shows it: header fields, the value field, and members when it is grouped."""

    code: int
    vendor: int
    length: int
    name: str  # tshark's name ("Unknown" when its dictionary lacks the AVP)
    unknown: bool
    showname: str  # the line tshark prints for the AVP
    value: str | None  # the "show" of the value field, e.g. "32260@3gpp.org", "4", "Nov 21, 2026 ..."
    details: dict[str, str]  # sub-fields of the value field by name (an Address's family and IPv4 ...)
    children: list[DecodedAvp] = field(default_factory=list)

    def walk(self) -> Iterable[DecodedAvp]:
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(slots=True)
class DecodedMessage:
    frame: int
    command_code: int
    is_request: bool
    flags: int
    application: int
    hop_by_hop: int
    end_to_end: int
    avps: list[DecodedAvp]
    problems: list[str]  # malformed packets, and expert notes of warning or error severity

    def walk(self) -> Iterable[DecodedAvp]:
        for avp in self.avps:
            yield from avp.walk()

    @property
    def key(self) -> tuple[int, bool, int, int]:
        return (self.command_code, self.is_request, self.hop_by_hop, self.end_to_end)


def decode_diameter(capture: Path, port: int) -> list[DecodedMessage]:
    """Every Diameter message tshark finds in ``capture``, TCP on ``port`` decoded as Diameter."""
    if TSHARK is None:
        raise RuntimeError("tshark is not installed")
    result = subprocess.run(
        [TSHARK, "-n", "-r", str(capture), "-d", f"tcp.port=={port},diameter", "-T", "pdml"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return parse_pdml(result.stdout)


# Fields of an AVP that are its header, not its value.
_AVP_HEADER_FIELDS = {"diameter.avp.code", "diameter.avp.flags", "diameter.avp.len", "diameter.avp.vendorId",
                      "diameter.avp.pad", "diameter.avp"}  # fmt: skip


def parse_pdml(pdml: bytes) -> list[DecodedMessage]:
    root = ET.fromstring(pdml)
    messages: list[DecodedMessage] = []
    for packet in root.iter("packet"):
        number = packet.find("proto[@name='frame']/field[@name='frame.number']")
        frame = int(number.get("show", "0")) if number is not None else 0
        malformed = [
            f"malformed packet: {proto.get('showname', '')}"
            for proto in packet.iter("proto")
            if proto.get("name") == "_ws.malformed"
        ]
        for proto in packet.findall("proto[@name='diameter']"):
            messages.append(_message(frame, proto, malformed))
    return messages


def _show_int(parent: ET.Element, name: str) -> int:
    element = parent.find(f"field[@name='{name}']")
    return int(element.get("show", "-1"), 0) if element is not None else -1


def _expert_problems(element: ET.Element) -> list[str]:
    """Expert notes of warning or error severity (malformed AVPs, unknown AVPs, empty data ...)."""
    problems = []
    for expert in element.iter("field"):
        if expert.get("name") == "_ws.expert":
            severity = next((f.get("showname", "") for f in expert.iter("field")
                             if f.get("name") == "_ws.expert.severity"), "")  # fmt: skip
            if "Warning" in severity or "Error" in severity:
                problems.append(expert.get("showname", "expert info"))
    return problems


def _message(frame: int, proto: ET.Element, packet_problems: list[str]) -> DecodedMessage:
    flags = _show_int(proto, "diameter.flags")
    return DecodedMessage(
        frame=frame,
        command_code=_show_int(proto, "diameter.cmd.code"),
        is_request=flags >= 0 and bool(flags & 0x80),
        flags=flags,
        application=_show_int(proto, "diameter.applicationId"),
        hop_by_hop=_show_int(proto, "diameter.hopbyhopid"),
        end_to_end=_show_int(proto, "diameter.endtoendid"),
        avps=_members(proto),
        problems=packet_problems + _expert_problems(proto),
    )


def _members(element: ET.Element) -> list[DecodedAvp]:
    return [_avp(child) for child in element.findall("field[@name='diameter.avp']")]


def _avp(element: ET.Element) -> DecodedAvp:
    showname = element.get("showname", "")
    # "AVP: Session-Id(263) l=41 f=-M- val=...": the name stands between "AVP: " and "(code)".
    name = showname.removeprefix("AVP: ").split("(", 1)[0].strip()
    code_field = element.find("field[@name='diameter.avp.code']")
    unknown = code_field is not None and any(
        f.get("name") == "diameter.avp.code.unknown" for f in code_field.iter("field")
    )
    value_field = next(
        (f for f in element.findall("field") if f.get("name", "").startswith("diameter.")
         and f.get("name") not in _AVP_HEADER_FIELDS),
        None,
    )  # fmt: skip
    value = value_field.get("show") if value_field is not None else None
    details = (
        {f.get("name", ""): f.get("show", "") for f in value_field.iter("field")} if value_field is not None else {}
    )
    children = _members(value_field) if value_field is not None else []
    return DecodedAvp(
        code=_show_int(element, "diameter.avp.code"),
        vendor=max(_show_int(element, "diameter.avp.vendorId"), 0),
        length=_show_int(element, "diameter.avp.len"),
        name=name,
        unknown=unknown or name == "Unknown",
        showname=showname,
        value=value,
        details=details,
        children=children,
    )


# -- writing a pcap by hand (the fallback when capturing is impossible) ---------------------------------

_PCAP_HEADER = struct.Struct("<IHHiIII")
_PCAP_RECORD = struct.Struct("<IIII")
_LINKTYPE_RAW = 101  # raw IPv4, no link-layer header


def write_pcap(path: Path, segments: Iterable[tuple[bool, bytes]], port: int, client_port: int = 40000) -> None:
    """A libpcap file of one TCP conversation on 127.0.0.1: ``(from_client, payload)`` per segment.

    Sequence numbers advance with the payload and a handshake opens the conversation, so tshark's TCP
    analysis and reassembly treat it like a real capture.
    """
    seq = {True: 1000, False: 5000}
    out = [_PCAP_HEADER.pack(0xA1B2C3D4, 2, 4, 0, 0, 65535, _LINKTYPE_RAW)]
    stamp = 1_700_000_000.0

    def record(from_client: bool, flags: int, payload: bytes) -> None:
        nonlocal stamp
        src, dst = (client_port, port) if from_client else (port, client_port)
        ack = seq[not from_client]
        tcp = struct.pack(">HHIIBBHHH", src, dst, seq[from_client], ack, 5 << 4, flags, 65535, 0, 0)
        total = 20 + len(tcp) + len(payload)
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 6, 0, bytes([127, 0, 0, 1]),
                         bytes([127, 0, 0, 1]))  # fmt: skip
        ip = ip[:10] + struct.pack(">H", _checksum(ip)) + ip[12:]
        tcp = tcp[:16] + struct.pack(">H", _tcp_checksum(ip, tcp + payload)) + tcp[18:]
        packet = ip + tcp + payload
        stamp += 0.001
        out.append(_PCAP_RECORD.pack(int(stamp), int((stamp % 1) * 1e6), len(packet), len(packet)) + packet)
        seq[from_client] = (seq[from_client] + len(payload) + (1 if flags & 0x03 else 0)) & 0xFFFFFFFF

    record(True, 0x02, b"")  # SYN
    record(False, 0x12, b"")  # SYN-ACK
    record(True, 0x10, b"")  # ACK
    for from_client, payload in segments:
        record(from_client, 0x18, payload)  # PSH-ACK
    path.write_bytes(b"".join(out))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _tcp_checksum(ip: bytes, segment: bytes) -> int:
    pseudo = ip[12:20] + struct.pack(">BBH", 0, 6, len(segment))
    return _checksum(pseudo + segment)


# -- what our nodes sent and received ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JournalEntry:
    node: str  # the Origin-Host of the node that reported it
    direction: str  # "send" or "recv"
    peer: str  # the peer's host, "" while a connection has not named its peer yet
    message: Message


class MessageJournal:
    """Every message the given nodes report to their observers, in the order they happened."""

    def __init__(self, *nodes: DiameterNode) -> None:
        self.entries: list[JournalEntry] = []
        for node in nodes:
            node.observers.append(self._observer(node.config.identity.origin_host))

    def _observer(self, host: str) -> Callable[[str, Peer | None, Message], None]:
        def observe(direction: str, peer: Peer | None, msg: Message) -> None:
            self.entries.append(JournalEntry(host, direction, peer.host if peer is not None else "", msg))

        return observe

    def messages(
        self, direction: str, command: str | None = None, peer: str | None = None, node: str | None = None
    ) -> list[Message]:
        """``command`` as ``Message.command_name`` spells it: "DWR", "DWA", "CCR" ..."""
        return [
            e.message
            for e in self.entries
            if e.direction == direction
            and (command is None or e.message.command_name == command)
            and (peer is None or e.peer == peer)
            and (node is None or e.node == node)
        ]

    def count(self, direction: str, command: str | None = None, peer: str | None = None) -> int:
        return len(self.messages(direction, command, peer))
