"""The charging trace format: JSON lines, a header first, then one record per line.

docs/traces.md is the reference; this module reads and writes it and nothing else
(no sockets, no clock).  Records:

- ``header`` (the first line): format name and version, when and from what the trace
  was made, ``start`` (the Unix time of t = 0), and ``setup``: what a replay must
  provision first (OCF accounts and tariffs, settings of the in-process target).
- ``message``: one Diameter message, ``t`` seconds after ``start``, on ``connection``,
  sent by its ``client`` or ``server`` side; ``hex`` holds the octets (the authority),
  ``decoded`` the readable tree (written for people, read only when ``hex`` is absent);
  ``expect`` optionally holds what the answer, the CDRs and the balances must be
  once the message has been answered.
- ``check``: expectations at a point in time with no message, e.g. after a timer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from charging.diameter.errors import DiameterError
from charging.diameter.message import Message
from charging.trace.display import JsonTree, describe, iso_time, message_from_tree

TRACE_FORMAT = "charging-trace"
TRACE_VERSION = 1

Sender = Literal["client", "server"]
SENDERS: tuple[Sender, ...] = ("client", "server")


class TraceFormatError(ValueError):
    """A trace that cannot be read; the message names the file and line."""


@dataclass(slots=True)
class Endpoint:
    """One side of a connection: its Diameter identity and its transport address, as far as known."""

    host: str = ""  # Origin-Host
    address: str = ""  # "192.0.2.1:3868" or "[2001:db8::1]:3868"

    def to_json(self) -> dict[str, str]:
        return {"host": self.host, "address": self.address}


@dataclass(slots=True)
class Expectation:
    """What must hold once a message is answered (or at a check's time)."""

    # AVPs the answer must carry, as a tree; replaces the recorded answer as the reference when given.
    answer: JsonTree | None = None
    # The CDRs produced since the previous expectation that named CDRs (or since the start), in any order.
    cdrs: list[dict[str, Any]] | None = None
    # Account name → fields (``balance``, ``reserved``, ...) that must have these values.
    balances: dict[str, dict[str, Any]] | None = None

    @property
    def empty(self) -> bool:
        return self.answer is None and self.cdrs is None and self.balances is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.answer is not None:
            out["answer"] = self.answer
        if self.cdrs is not None:
            out["cdrs"] = self.cdrs
        if self.balances is not None:
            out["balances"] = self.balances
        return out


@dataclass(slots=True)
class Header:
    start: float  # Unix seconds at t = 0
    created: str = ""  # ISO 8601
    source: dict[str, Any] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "header",
            "format": TRACE_FORMAT,
            "version": TRACE_VERSION,
            "created": self.created,
            "start": round(self.start, 6),
            "start_time": iso_time(datetime.fromtimestamp(self.start, UTC)),
            "source": self.source,
            "setup": self.setup,
        }
        if self.description:
            out["description"] = self.description
        return out


@dataclass(slots=True)
class MessageRecord:
    t: float
    connection: int
    sender: Sender
    raw: bytes
    peer: Endpoint = field(default_factory=Endpoint)
    expect: Expectation | None = None
    line: int = 0  # where it was read from; 0 when built in code
    _message: Message | None = field(default=None, repr=False)

    @property
    def message(self) -> Message:
        """The message, decoded once (lazily, like every Message)."""
        if self._message is None:
            self._message = Message.decode(self.raw)
        return self._message

    @property
    def is_request(self) -> bool:
        return bool(self.raw[4] & 0x80)

    @property
    def direction(self) -> str:
        return "request" if self.is_request else "answer"

    @property
    def hop_by_hop(self) -> int:
        return int.from_bytes(self.raw[12:16], "big")

    @property
    def end_to_end(self) -> int:
        return int.from_bytes(self.raw[16:20], "big")

    @property
    def code(self) -> int:
        return int.from_bytes(self.raw[5:8], "big")

    def to_json(self) -> dict[str, Any]:
        msg = self.message
        try:
            decoded: Any = describe(msg)
        except DiameterError as exc:  # AVPs that cannot even be split: the hex still holds them
            decoded = {"command": msg.command_name, "undecodable": str(exc)}
        out: dict[str, Any] = {
            "type": "message",
            "t": round(self.t, 6),
            "connection": self.connection,
            "sender": self.sender,
            "direction": self.direction,
            "command": msg.command_name,
            "peer": self.peer.to_json(),
            "hex": self.raw.hex(),
            "decoded": decoded,
        }
        if self.expect is not None and not self.expect.empty:
            out["expect"] = self.expect.to_json()
        return out


@dataclass(slots=True)
class CheckRecord:
    t: float
    expect: Expectation
    name: str = ""
    line: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "check", "t": round(self.t, 6)}
        if self.name:
            out["name"] = self.name
        out["expect"] = self.expect.to_json()
        return out


Record = MessageRecord | CheckRecord


@dataclass(slots=True)
class Trace:
    header: Header
    records: list[Record] = field(default_factory=list)

    @property
    def messages(self) -> list[MessageRecord]:
        return [r for r in self.records if isinstance(r, MessageRecord)]


# -- writing ------------------------------------------------------------------------------------


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class TraceWriter:
    """Writes a trace line by line, flushing each, so a trace cut short is still readable."""

    def __init__(self, stream: IO[str], header: Header) -> None:
        self._stream = stream
        self.header = header
        self.count = 0
        self._write(header.to_json())

    def write(self, record: Record) -> None:
        self._write(record.to_json())
        self.count += 1

    def _write(self, obj: dict[str, Any]) -> None:
        self._stream.write(dumps(obj) + "\n")
        self._stream.flush()


def write_trace(path: str | Path, trace: Trace) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        writer = TraceWriter(stream, trace.header)
        for record in trace.records:
            writer.write(record)


def now_iso(unix_seconds: float) -> str:
    return iso_time(datetime.fromtimestamp(round(unix_seconds), UTC))


# -- reading ------------------------------------------------------------------------------------


def read_trace(path: str | Path) -> Trace:
    """A whole trace file, checked; errors name the file and the line."""
    name = str(path)
    try:
        with open(path, encoding="utf-8") as stream:
            return parse_lines(stream, name)
    except FileNotFoundError:
        raise TraceFormatError(f"{name}: no such trace file") from None


def parse_lines(lines: Iterable[str], name: str = "<trace>") -> Trace:
    header: Header | None = None
    records: list[Record] = []
    last_t = 0.0
    for number, text in _numbered(lines):
        where = f"{name} line {number}"
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise TraceFormatError(f"{where}: not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise TraceFormatError(f"{where}: a record must be a JSON object")
        kind = obj.get("type")
        if header is None:
            if kind != "header":
                raise TraceFormatError(f"{where}: the first record must be the header")
            header = _header(obj, where)
            continue
        if kind == "message":
            record: Record = _message(obj, where, number)
        elif kind == "check":
            record = CheckRecord(_time(obj, where), _expectation(obj.get("expect"), where), str(obj.get("name", "")))
            record.line = number
            if record.expect.answer is not None:
                raise TraceFormatError(f"{where}: a check has no message, so it cannot expect an answer")
        elif kind == "header":
            raise TraceFormatError(f"{where}: a second header")
        else:
            raise TraceFormatError(f"{where}: unknown record type {kind!r}")
        if record.t < last_t:
            raise TraceFormatError(f"{where}: t {record.t} is before the previous record's {last_t}")
        last_t = record.t
        records.append(record)
    if header is None:
        raise TraceFormatError(f"{name}: empty trace (no header)")
    return Trace(header, records)


def _numbered(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    for number, text in enumerate(lines, 1):
        if text.strip():
            yield number, text


def _header(obj: dict[str, Any], where: str) -> Header:
    if obj.get("format") != TRACE_FORMAT:
        raise TraceFormatError(f"{where}: format must be {TRACE_FORMAT!r}")
    version = obj.get("version")
    if version != TRACE_VERSION:
        raise TraceFormatError(f"{where}: trace version {version!r} is not supported (this reads {TRACE_VERSION})")
    start = obj.get("start")
    if not isinstance(start, int | float) or isinstance(start, bool):
        raise TraceFormatError(f"{where}: start must be Unix seconds")
    source = obj.get("source", {})
    setup = obj.get("setup", {})
    if not isinstance(source, dict) or not isinstance(setup, dict):
        raise TraceFormatError(f"{where}: source and setup must be objects")
    return Header(float(start), str(obj.get("created", "")), source, setup, str(obj.get("description", "")))


def _time(obj: dict[str, Any], where: str) -> float:
    t = obj.get("t")
    if not isinstance(t, int | float) or isinstance(t, bool) or t < 0:
        raise TraceFormatError(f"{where}: t must be a number of seconds, at least 0")
    return float(t)


def _message(obj: dict[str, Any], where: str, number: int) -> MessageRecord:
    t = _time(obj, where)
    connection = obj.get("connection", 1)
    if not isinstance(connection, int) or isinstance(connection, bool):
        raise TraceFormatError(f"{where}: connection must be an integer")
    sender = obj.get("sender")
    if sender not in SENDERS:
        raise TraceFormatError(f"{where}: sender must be 'client' or 'server'")
    peer_obj = obj.get("peer", {})
    if not isinstance(peer_obj, dict):
        raise TraceFormatError(f"{where}: peer must be an object")
    peer = Endpoint(str(peer_obj.get("host", "")), str(peer_obj.get("address", "")))
    raw = _raw(obj, where)
    expect = _expectation(obj["expect"], where) if "expect" in obj else None
    record = MessageRecord(t, connection, sender, raw, peer, expect, number)
    direction = obj.get("direction")
    if direction is not None and direction != record.direction:
        raise TraceFormatError(f"{where}: direction says {direction} but the message's R bit says otherwise")
    if expect is not None and not record.is_request:
        raise TraceFormatError(f"{where}: an answer has no expectations: put them on its request or in a check")
    return record


def _raw(obj: dict[str, Any], where: str) -> bytes:
    text = obj.get("hex")
    if text is not None:
        if not isinstance(text, str):
            raise TraceFormatError(f"{where}: hex must be a string")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise TraceFormatError(f"{where}: hex is not hexadecimal") from None
        try:
            msg = Message.decode(raw)
            if msg.version != 1:
                raise TraceFormatError(f"{where}: hex is not one Diameter message: version {msg.version}")
            msg.avps  # noqa: B018 - splits the AVPs, which checks their lengths
        except DiameterError as exc:
            raise TraceFormatError(f"{where}: hex is not one Diameter message: {exc}") from None
        return raw
    decoded = obj.get("decoded")
    if not isinstance(decoded, dict):
        raise TraceFormatError(f"{where}: a message needs hex or a decoded tree")
    try:
        return message_from_tree(decoded).to_bytes()
    except (KeyError, ValueError, TypeError) as exc:
        raise TraceFormatError(f"{where}: cannot encode the decoded tree: {exc}") from None


def _expectation(obj: Any, where: str) -> Expectation:
    if not isinstance(obj, dict):
        raise TraceFormatError(f"{where}: expect must be an object")
    unknown = set(obj) - {"answer", "cdrs", "balances"}
    if unknown:
        raise TraceFormatError(f"{where}: expect has unknown keys {sorted(unknown)}")
    answer = obj.get("answer")
    cdrs = obj.get("cdrs")
    balances = obj.get("balances")
    if answer is not None and not isinstance(answer, dict):
        raise TraceFormatError(f"{where}: expect.answer must be an object of AVPs")
    if cdrs is not None and not (isinstance(cdrs, list) and all(isinstance(c, dict) for c in cdrs)):
        raise TraceFormatError(f"{where}: expect.cdrs must be a list of objects")
    if balances is not None and not (
        isinstance(balances, dict) and all(isinstance(v, dict) for v in balances.values())
    ):
        raise TraceFormatError(f"{where}: expect.balances must map account names to objects")
    return Expectation(answer, cdrs, balances)
