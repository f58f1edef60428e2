"""Diameter messages out of reassembled streams, with no I/O.

Each direction of each connection gets the project's ``Framer``.  A stream that
was not seen from its start (the capture began inside the connection), that has a
gap the capture never filled, or that stops framing (not Diameter, or damaged)
is searched for the next octet at which a plausible message starts: version 1, a
sane length, no reserved flag bits, a command the dictionary knows, and AVPs that
split cleanly.  Framing resumes there; the octets skipped are counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from charging.diameter.dictionary import DICTIONARY
from charging.diameter.errors import DiameterError
from charging.diameter.framing import DEFAULT_MAX_MESSAGE, Framer, FramingError
from charging.diameter.message import HEADER_LENGTH, parse_avps
from charging.trace.tcp import Address, Closed, Data, Gap, Opened, StreamEvent

_HUNT_MAX = 1 << 16  # a message start found by hunting is believed only up to this length


@dataclass(frozen=True, slots=True)
class CapturedMessage:
    t: float
    conn: int
    side: int
    raw: bytes


@dataclass(slots=True)
class _Direction:
    framer: Framer | None  # None while hunting for a message start
    unframed: bytearray = field(default_factory=bytearray)  # what the framer holds, should it fail
    hunt: bytearray = field(default_factory=bytearray)


@dataclass(slots=True)
class ConnectionInfo:
    id: int
    ends: tuple[Address, Address]  # side 0, side 1
    syn_seen: bool
    transport: str
    opened: float
    closed: float | None = None
    close_reason: str = ""


class DiameterStreams:
    """Stream events in, whole Diameter messages out."""

    def __init__(self, transport: str = "tcp", max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.transport = transport
        self._max = max_message
        self._dirs: dict[tuple[int, int], _Direction] = {}
        self.connections: dict[int, ConnectionInfo] = {}
        self.skipped = 0  # octets that could not be framed as Diameter
        self.gaps = 0

    def event(self, event: StreamEvent) -> list[CapturedMessage]:
        if isinstance(event, Opened):
            self.connections[event.conn] = ConnectionInfo(
                event.conn, (event.initiator, event.responder), event.syn_seen, self.transport, event.t
            )
            for side in (0, 1):
                # Seen from its first octet, a stream is framed at once; else the next message start is hunted.
                framer = Framer(self._max) if event.syn_seen else None
                self._dirs[(event.conn, side)] = _Direction(framer)
            return []
        if isinstance(event, Data):
            return self._data(event)
        if isinstance(event, Gap):
            self.gaps += 1
            d = self._dirs.get((event.conn, event.side))
            if d is not None:
                self.skipped += len(d.unframed) + len(d.hunt)
                d.framer = None
                d.unframed.clear()
                d.hunt.clear()
            return []
        if isinstance(event, Closed):
            info = self.connections.get(event.conn)
            if info is not None:
                info.closed = event.t
                info.close_reason = event.reason
            for side in (0, 1):
                d = self._dirs.pop((event.conn, side), None)
                if d is not None:
                    self.skipped += len(d.hunt) + len(d.unframed)
            return []
        return []

    def _data(self, event: Data) -> list[CapturedMessage]:
        d = self._dirs.get((event.conn, event.side))
        if d is None:
            return []
        frames: list[bytes] = []
        data = event.data
        while data:
            if d.framer is not None:
                d.unframed += data
                try:
                    complete = d.framer.feed(data)
                except FramingError:
                    # The framer gives up on the whole buffer: keep the messages before the bad header
                    # and hunt for the next message start just after it.
                    good, bad_at = _split_frames(bytes(d.unframed), self._max)
                    frames += good
                    data = bytes(d.unframed[bad_at + 1 :])
                    d.unframed.clear()
                    d.framer = None
                    self.skipped += 1
                    continue
                frames += complete
                del d.unframed[: sum(len(f) for f in complete)]
                break
            d.hunt += data
            data = b""
            start = self._hunt(d.hunt)
            if start is None:
                break
            self.skipped += start
            data = bytes(d.hunt[start:])
            d.hunt.clear()
            d.framer = Framer(self._max)
        return [CapturedMessage(event.t, event.conn, event.side, f) for f in frames]

    def _hunt(self, buf: bytearray) -> int | None:
        """The offset of the first plausible, complete message; None if there is none yet.

        Octets that cannot begin one are dropped from the buffer (and counted), so that
        it holds at most the start of a message that is still arriving.
        """
        offset = 0
        while len(buf) - offset >= HEADER_LENGTH:
            verdict = self._plausible(buf, offset)
            if verdict is True:
                return offset
            if verdict is None:  # plausible, but not all of it is here yet
                break
            offset += 1
        else:
            offset = max(0, len(buf) - HEADER_LENGTH + 1)
        if offset:
            self.skipped += offset
            del buf[:offset]
        return None

    def _plausible(self, buf: bytearray, at: int) -> bool | None:
        if buf[at] != 1:
            return False
        length = int.from_bytes(buf[at + 1 : at + 4], "big")
        if length < HEADER_LENGTH or length & 3 or length > min(self._max, _HUNT_MAX):
            return False
        flags = buf[at + 4]
        if flags & 0x0F:
            return False
        code = int.from_bytes(buf[at + 5 : at + 8], "big")
        if DICTIONARY.command(code) is None:
            return False
        if len(buf) - at < length:
            return None
        body = bytes(buf[at : at + length])
        try:
            parse_avps(body, HEADER_LENGTH, length)
        except DiameterError:
            return False
        return True


def _split_frames(buf: bytes, max_message: int) -> tuple[list[bytes], int]:
    """The whole messages at the front of ``buf`` and the offset of the first header that cannot start one."""
    frames: list[bytes] = []
    offset = 0
    while len(buf) - offset >= 4:
        length = int.from_bytes(buf[offset + 1 : offset + 4], "big")
        if buf[offset] != 1 or length < HEADER_LENGTH or length & 3 or length > max_message:
            return frames, offset
        if len(buf) - offset < length:
            break
        frames.append(buf[offset : offset + length])
        offset += length
    return frames, offset
