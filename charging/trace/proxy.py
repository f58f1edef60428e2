"""``charging trace record``: a transparent Diameter proxy that writes what passes through it as a trace.

Each client that connects gets its own connection to the server.  Octets are
forwarded both ways as they arrive, unchanged (CER/CEA included: the two ends
negotiate with each other, not with the proxy); a copy of each direction goes
through a ``Framer`` so that every message is recorded, with the time it was
complete, its connection and its side.  A direction that stops framing as Diameter
is still forwarded, just no longer recorded.  A half-close is passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from charging.diameter.framing import Framer, FramingError
from charging.diameter.message import Message
from charging.trace.format import Endpoint, Sender
from charging.trace.recorder import TraceRecorder

log = logging.getLogger("charging.trace.proxy")

_CHUNK = 65536


class RecordingProxy:
    def __init__(self, listen: tuple[str, int], server: tuple[str, int], recorder: TraceRecorder) -> None:
        self.listen = listen
        self.server = server
        self.recorder = recorder
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._next_conn = 1
        self.bound: tuple[str, int] | None = None

    @property
    def port(self) -> int:
        assert self.bound is not None
        return self.bound[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accepted, self.listen[0], self.listen[1])
        sock = self._server.sockets[0]
        self.bound = sock.getsockname()[:2]

    async def stop(self) -> None:
        """Stop accepting and close every relayed connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def wait_idle(self) -> None:
        """Wait until every relayed connection has ended."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _accepted(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = self._next_conn
        self._next_conn += 1
        client_addr = _address(c_writer.get_extra_info("peername"))
        try:
            try:
                s_reader, s_writer = await asyncio.open_connection(*self.server)
            except OSError as exc:
                log.warning("connection %d from %s: server %s:%d unreachable: %s", conn, client_addr, *self.server, exc)
                c_writer.close()
                return
            server_addr = _address(s_writer.get_extra_info("peername"))
            log.info("connection %d: %s <-> %s", conn, client_addr, server_addr)
            client = _Side(conn, "client", client_addr, self.recorder)
            server = _Side(conn, "server", server_addr, self.recorder)
            try:
                await asyncio.gather(
                    _pump(c_reader, s_writer, client),
                    _pump(s_reader, c_writer, server),
                )
            finally:
                for writer in (c_writer, s_writer):
                    writer.close()
                    with contextlib.suppress(ConnectionError, OSError):
                        await writer.wait_closed()
        finally:
            self._tasks.discard(task)


class _Side:
    """One direction of a relayed connection: frames its octets and records each message."""

    def __init__(self, conn: int, sender: Sender, address: str, recorder: TraceRecorder) -> None:
        self.conn = conn
        self.sender = sender
        self.endpoint = Endpoint("", address)
        self.recorder = recorder
        self.framer: Framer | None = Framer()

    def seen(self, data: bytes) -> None:
        if self.framer is None:
            return
        try:
            frames = self.framer.feed(data)
        except FramingError as exc:
            log.warning(
                "connection %d, %s side: not Diameter any more (%s); still relayed, not recorded",
                self.conn,
                self.sender,
                exc,
            )
            self.framer = None
            return
        for raw in frames:
            if not self.endpoint.host:
                try:
                    host = Message.decode(raw).get("Origin-Host", "")
                except Exception:  # a message the proxy cannot read is still relayed and recorded
                    host = ""
                if isinstance(host, str) and host:
                    self.endpoint = Endpoint(host, self.endpoint.address)
            self.recorder.message(self.conn, self.sender, raw, self.endpoint)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, side: _Side) -> None:
    try:
        while True:
            data = await reader.read(_CHUNK)
            if not data:
                break
            writer.write(data)
            side.seen(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        if writer.can_write_eof() and not writer.is_closing():
            with contextlib.suppress(ConnectionError, OSError):
                writer.write_eof()


def _address(peername: object) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = str(peername[0]), int(peername[1])
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return ""
