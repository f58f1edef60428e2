"""The trace recorder: a structured log of Diameter traffic, written as it happens.

Modelled on aioquic's QuicLogger: the code that sees the traffic calls
``message(...)`` for every message, the recorder stamps it with the injected clock
and writes one trace record per call, flushed, so a recording cut short is still a
valid trace.  Two feeds use it: the recording proxy (``proxy.py``), and any
``DiameterNode`` through ``node_observer(...)`` — a node's own traffic, recorded by
its message observer hook, replays as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import IO, Any

from charging.clock import Clock
from charging.diameter.constants import Command
from charging.diameter.message import Message
from charging.diameter.peer import Peer, State
from charging.trace.format import Endpoint, Expectation, Header, MessageRecord, Sender, TraceWriter, now_iso

log = logging.getLogger("charging.trace")


class TraceRecorder:
    def __init__(
        self,
        stream: IO[str],
        clock: Clock,
        source: dict[str, Any],
        setup: dict[str, Any] | None = None,
        description: str = "",
    ) -> None:
        self._clock = clock
        now = clock.now()
        self.start = now
        self._last_t = 0.0
        header = Header(start=now, created=now_iso(now), source=source, setup=setup or {}, description=description)
        self._writer = TraceWriter(stream, header)

    @property
    def count(self) -> int:
        return self._writer.count

    def message(
        self,
        connection: int,
        sender: Sender,
        raw: bytes,
        peer: Endpoint | None = None,
        expect: Expectation | None = None,
    ) -> None:
        """One message, stamped now; times never run backwards in a trace."""
        t = max(self._last_t, self._clock.now() - self.start)
        self._last_t = t
        self._writer.write(MessageRecord(t, connection, sender, raw, peer or Endpoint(), expect))

    def node_observer(self, local_host: str) -> Callable[[str, Peer | None, Message], None]:
        """A ``DiameterNode.observers`` entry that records what the node sends and receives.

        The node is the client on connections it dialled and the server on those it
        accepted.  A CER arrives before the node knows its peer; it is held until the
        CEA names the connection, and written just before it.
        """
        held: dict[tuple[int, int], bytes] = {}

        def observe(direction: str, peer: Peer | None, msg: Message) -> None:
            raw = msg.to_bytes()
            if peer is None:
                if msg.is_request and msg.code == Command.CAPABILITIES_EXCHANGE:
                    held[(msg.hop_by_hop, msg.end_to_end)] = raw
                return
            we_dialled = (peer.i_conn is not None and peer.conn == peer.i_conn) or peer.state is State.WAIT_I_CEA
            conn = peer.conn if peer.conn is not None else (peer.i_conn or peer.r_conn or 0)
            remote = Endpoint(peer.info.origin_host or peer.host, _first(peer.info.host_ip_addresses))
            local = Endpoint(local_host, "")
            if direction == "send":
                cer = held.pop((msg.hop_by_hop, msg.end_to_end), None)
                if cer is not None and msg.code == Command.CAPABILITIES_EXCHANGE:
                    self.message(conn, "client", cer, remote)
                self.message(conn, "client" if we_dialled else "server", raw, local)
            else:
                self.message(conn, "server" if we_dialled else "client", raw, remote)

        return observe


def _first(values: list[str]) -> str:
    return values[0] if values else ""
