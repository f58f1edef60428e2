"""TCP stream reassembly from captured segments, with no I/O.

Segments go in as captured (``segment(...)``), in capture order; stream events come
out: a connection seen, bytes delivered in sequence order per direction, a gap that
will never be filled, a connection closed.  What it copes with:

- segments out of order (held until the hole before them is filled);
- retransmissions and overlapping segments (octets already delivered are dropped:
  the first copy wins, as a receiving stack would do);
- several connections at once, both directions, a 4-tuple reused after a close
  (a new SYN opens a new connection);
- sequence numbers that wrap past 2**32;
- captures that start mid-connection (no SYN: the first segment seen sets the
  start) or that lost segments (the held data is delivered after a ``Gap`` when the
  connection closes, the capture ends, or too much is held).

A side is named by ``0`` (the one that sent the SYN, or failing that the sender of
the first segment seen) and ``1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SYN = 0x02
FIN = 0x01
RST = 0x04
ACK = 0x10

_MOD = 1 << 32
_HALF = 1 << 31

Address = tuple[str, int]  # (ip, port)


def seq_diff(a: int, b: int) -> int:
    """``a - b`` in sequence space: negative when ``a`` is before ``b`` (RFC 1982 style)."""
    d = (a - b) % _MOD
    return d - _MOD if d >= _HALF else d


@dataclass(frozen=True, slots=True)
class Opened:
    conn: int
    t: float
    initiator: Address  # side 0
    responder: Address  # side 1
    syn_seen: bool  # False: the capture began inside the connection, so side 0 is a guess


@dataclass(frozen=True, slots=True)
class Data:
    conn: int
    side: int
    t: float
    data: bytes


@dataclass(frozen=True, slots=True)
class Gap:
    """Octets of this direction that the capture never held; what follows is delivered after it."""

    conn: int
    side: int
    t: float
    missing: int


@dataclass(frozen=True, slots=True)
class Closed:
    conn: int
    t: float
    reason: str  # "fin", "rst", "end of capture"


StreamEvent = Opened | Data | Gap | Closed


@dataclass(slots=True)
class _Half:
    isn: int | None = None  # initial sequence number, when the SYN was seen
    next_seq: int | None = None  # the next octet expected
    held: dict[int, bytes] = field(default_factory=dict)  # out-of-order segments by sequence number
    held_bytes: int = 0
    fin_seq: int | None = None  # sequence number of the FIN, once seen
    finished: bool = False  # every octet up to the FIN delivered


@dataclass(slots=True)
class _Conn:
    id: int
    ends: tuple[Address, Address]
    halves: tuple[_Half, _Half] = field(default_factory=lambda: (_Half(), _Half()))
    closed: bool = False


class TcpReassembler:
    """Turns captured TCP segments into ordered byte streams per connection and direction."""

    def __init__(self, max_held: int = 16 << 20) -> None:
        self._max_held = max_held
        self._conns: dict[frozenset[Address], _Conn] = {}
        self._next_id = 1
        self.retransmitted = 0  # segments (or parts) dropped as already delivered

    def segment(
        self,
        t: float,
        src: Address,
        dst: Address,
        seq: int,
        flags: int,
        payload: bytes,
    ) -> list[StreamEvent]:
        """One captured segment; returns what it makes known."""
        events: list[StreamEvent] = []
        key = frozenset((src, dst))
        conn = self._conns.get(key)
        opening = bool(flags & SYN) and not flags & ACK
        if conn is not None and opening and not self._is_syn_again(conn, src, seq):
            if not conn.closed:
                events += self._close(conn, t, "reused")
            conn = None
        if conn is None:
            if not payload and not flags & SYN and flags & (FIN | RST):
                return events  # the tail of a connection the capture did not see open
            conn = self._open(key, src, dst, t, opening, events)
        elif conn.closed:
            return events  # late segments after a close: nothing more to deliver
        side = 0 if src == conn.ends[0] else 1
        half = conn.halves[side]
        if flags & SYN:
            if half.next_seq is None:
                half.isn = seq
                half.next_seq = (seq + 1) % _MOD
            seq = (seq + 1) % _MOD  # data on a SYN follows the SYN's own sequence number
        elif half.next_seq is None:
            half.next_seq = seq  # mid-stream start
        if payload:
            self._accept(conn, side, t, seq, payload, events)
        if flags & FIN:
            half.fin_seq = (seq + len(payload)) % _MOD
            self._check_fin(conn, side, t, events)
        if flags & RST:
            events += self._close(conn, t, "rst")
        elif all(h.finished for h in conn.halves):
            events += self._close(conn, t, "fin")
        return events

    def finish(self, t: float) -> list[StreamEvent]:
        """The capture ended: deliver what is held (after gaps) and close every connection."""
        events: list[StreamEvent] = []
        for conn in list(self._conns.values()):
            if not conn.closed:
                events += self._close(conn, t, "end of capture")
        return events

    # -- internals ------------------------------------------------------------------------
    @staticmethod
    def _is_syn_again(conn: _Conn, src: Address, seq: int) -> bool:
        """A retransmission of the SYN that opened this connection (same sender, same initial sequence)."""
        return not conn.closed and src == conn.ends[0] and conn.halves[0].isn == seq

    def _open(
        self, key: frozenset[Address], src: Address, dst: Address, t: float, syn: bool, events: list[StreamEvent]
    ) -> _Conn:
        conn = _Conn(self._next_id, (src, dst))
        self._next_id += 1
        self._conns[key] = conn
        events.append(Opened(conn.id, t, src, dst, syn))
        return conn

    def _accept(self, conn: _Conn, side: int, t: float, seq: int, payload: bytes, events: list[StreamEvent]) -> None:
        half = conn.halves[side]
        assert half.next_seq is not None
        ahead = seq_diff(seq, half.next_seq)
        if ahead < 0:
            if -ahead >= len(payload):
                self.retransmitted += 1
                return
            self.retransmitted += 1
            payload = payload[-ahead:]
            seq = half.next_seq
            ahead = 0
        if ahead > 0:
            old = half.held.get(seq)
            if old is None or len(old) < len(payload):
                half.held_bytes += len(payload) - (len(old) if old else 0)
                half.held[seq] = payload
            else:
                self.retransmitted += 1
            if half.held_bytes > self._max_held:
                self._skip_gap(conn, side, t, events)
            return
        events.append(Data(conn.id, side, t, payload))
        half.next_seq = (seq + len(payload)) % _MOD
        self._drain(conn, side, t, events)

    def _drain(self, conn: _Conn, side: int, t: float, events: list[StreamEvent]) -> None:
        """Deliver held segments that now follow on; drop the ones wholly behind."""
        half = conn.halves[side]
        progress = True
        while progress and half.held:
            progress = False
            assert half.next_seq is not None
            for seq in list(half.held):
                start = seq_diff(seq, half.next_seq)
                if start > 0:
                    continue
                data = half.held.pop(seq)
                half.held_bytes -= len(data)
                if -start >= len(data):
                    self.retransmitted += 1
                    continue
                tail = data[-start:] if start else data
                events.append(Data(conn.id, side, t, tail))
                half.next_seq = (half.next_seq + len(tail)) % _MOD
                progress = True
                break
        self._check_fin(conn, side, t, events)

    def _skip_gap(self, conn: _Conn, side: int, t: float, events: list[StreamEvent]) -> None:
        """Give up on the hole before the earliest held segment: report it and deliver from there."""
        half = conn.halves[side]
        if not half.held or half.next_seq is None:
            return
        base = half.next_seq
        first = min(half.held, key=lambda s: seq_diff(s, base))
        events.append(Gap(conn.id, side, t, seq_diff(first, base)))
        half.next_seq = first
        self._drain(conn, side, t, events)

    def _check_fin(self, conn: _Conn, side: int, t: float, events: list[StreamEvent]) -> None:
        half = conn.halves[side]
        if half.fin_seq is not None and half.next_seq is not None and seq_diff(half.next_seq, half.fin_seq) >= 0:
            half.finished = True

    def _close(self, conn: _Conn, t: float, reason: str) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        for side in (0, 1):
            while conn.halves[side].held:
                self._skip_gap(conn, side, t, events)
        conn.closed = True
        events.append(Closed(conn.id, t, reason))
        return events
