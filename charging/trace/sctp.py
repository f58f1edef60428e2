"""SCTP user messages from captured DATA chunks, with no I/O.

Diameter over SCTP (RFC 6733 2.1) sends each message as one SCTP user message,
possibly fragmented into several DATA chunks (B and E flags, consecutive TSNs).
This collects the DATA chunks of each association and direction, drops
retransmitted TSNs, puts fragments back together (also when they arrive out of
order), and reports each whole user message as a ``Data`` event, in the order the
messages became complete.  Every stream of the association feeds the same
direction, as the Diameter layer on top reads messages, not streams.

Associations are told apart by their address/port pairs; the INIT sender is side 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from charging.trace.tcp import Address, Closed, Data, Opened, StreamEvent

CHUNK_DATA = 0
CHUNK_INIT = 1
CHUNK_ABORT = 6
CHUNK_SHUTDOWN_COMPLETE = 14

FLAG_END = 0x01
FLAG_BEGIN = 0x02

_MOD = 1 << 32


@dataclass(slots=True)
class _Direction:
    seen: set[int] = field(default_factory=set)
    fragments: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # tsn -> (flags, user data)


@dataclass(slots=True)
class _Association:
    id: int
    ends: tuple[Address, Address]
    directions: tuple[_Direction, _Direction] = field(default_factory=lambda: (_Direction(), _Direction()))
    closed: bool = False


class SctpReassembler:
    def __init__(self) -> None:
        self._assocs: dict[frozenset[Address], _Association] = {}
        self._next_id = 1
        self.retransmitted = 0

    def chunks(self, t: float, src: Address, dst: Address, chunks: list[tuple[int, int, bytes]]) -> list[StreamEvent]:
        """The chunks of one SCTP packet: ``(type, flags, value)``, the value after the chunk header."""
        events: list[StreamEvent] = []
        key = frozenset((src, dst))
        assoc = self._assocs.get(key)
        for kind, flags, value in chunks:
            if kind == CHUNK_INIT:
                if assoc is not None and not assoc.closed:
                    if assoc.ends[0] == src:
                        continue  # a retransmitted INIT
                    events.append(Closed(assoc.id, t, "restart"))
                assoc = self._open(key, src, dst, t, True, events)
            elif kind == CHUNK_DATA:
                if assoc is None or assoc.closed:
                    assoc = self._open(key, src, dst, t, False, events)
                side = 0 if src == assoc.ends[0] else 1
                message = self._data(assoc.directions[side], flags, value)
                if message is not None:
                    events.append(Data(assoc.id, side, t, message))
            elif kind in (CHUNK_ABORT, CHUNK_SHUTDOWN_COMPLETE) and assoc is not None and not assoc.closed:
                assoc.closed = True
                events.append(Closed(assoc.id, t, "abort" if kind == CHUNK_ABORT else "shutdown"))
        return events

    def finish(self, t: float) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        for assoc in self._assocs.values():
            if not assoc.closed:
                assoc.closed = True
                events.append(Closed(assoc.id, t, "end of capture"))
        return events

    def _open(
        self, key: frozenset[Address], src: Address, dst: Address, t: float, init: bool, events: list[StreamEvent]
    ) -> _Association:
        assoc = _Association(self._next_id, (src, dst))
        self._next_id += 1
        self._assocs[key] = assoc
        events.append(Opened(assoc.id, t, src, dst, init))
        return assoc

    def _data(self, direction: _Direction, flags: int, value: bytes) -> bytes | None:
        if len(value) < 12:
            return None  # a DATA chunk without its TSN, stream and PPID fields
        tsn = int.from_bytes(value[0:4], "big")
        if tsn in direction.seen:
            self.retransmitted += 1
            return None
        direction.seen.add(tsn)
        user_data = value[12:]
        if flags & FLAG_BEGIN and flags & FLAG_END:
            return user_data
        direction.fragments[tsn] = (flags, user_data)
        return self._assemble(direction, tsn)

    @staticmethod
    def _assemble(direction: _Direction, tsn: int) -> bytes | None:
        """The whole message that ``tsn`` belongs to, if all its fragments are in."""
        frags = direction.fragments
        first = tsn
        while not frags[first][0] & FLAG_BEGIN:
            prev = (first - 1) % _MOD
            if prev not in frags or frags[prev][0] & FLAG_END:
                return None
            first = prev
        last = tsn
        while not frags[last][0] & FLAG_END:
            nxt = (last + 1) % _MOD
            if nxt not in frags or frags[nxt][0] & FLAG_BEGIN:
                return None
            last = nxt
        parts = []
        current = first
        while True:
            parts.append(frags.pop(current)[1])
            if current == last:
                break
            current = (current + 1) % _MOD
        return b"".join(parts)
