"""The asyncio edge of the SIP stack: UDP datagrams and TCP streams in and out, nothing else.

Whole messages go up as ``(bytes, Addr)``: a datagram is one message; a TCP stream is framed by
Content-Length (``StreamFramer``).  A TCP connection is known by its remote address, accepted or dialled,
and reused for anything sent to that address (RFC 3261 18.2.2 sends responses back over the connection
the request came on).  A send that cannot happen (connection refused, closed) calls ``on_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

from charging.gwf.sip.message import SipParseError, StreamFramer
from charging.gwf.sip.transaction import Addr

log = logging.getLogger("charging.gwf.sip")

OnData = Callable[[bytes, Addr], None]
OnError = Callable[[], None]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # the selector's class does not subclass it

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if data.strip(b"\r\n") == b"":
            return  # a keep-alive
        self.owner.on_data(data, Addr("UDP", str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)


class _Tcp(asyncio.Protocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.addr: Addr | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's class does not subclass it
        host, port = transport.get_extra_info("peername")[:2]
        self.addr = Addr("TCP", str(host), int(port))
        self.owner._connections[self.addr] = self

    def data_received(self, data: bytes) -> None:
        assert self.addr is not None and self.transport is not None
        pings = self.framer.keepalives
        try:
            frames = self.framer.feed(data)
        except SipParseError as exc:
            log.warning("closing SIP connection from %s:%d: %s", self.addr.host, self.addr.port, exc)
            self.transport.close()
            return
        if self.framer.keepalives > pings:
            self.transport.write(b"\r\n")  # RFC 5626 4.4.1: a CRLF pong for a double-CRLF ping
        for frame in frames:
            self.owner.on_data(frame, self.addr)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.addr is not None and self.owner._connections.get(self.addr) is self:
            del self.owner._connections[self.addr]

    def write(self, data: bytes) -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True


class SipTransport:
    def __init__(self, on_data: OnData) -> None:
        self.on_data = on_data
        self._udp: _Udp | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: dict[Addr, _Tcp] = {}
        self._dialling: dict[Addr, list[tuple[bytes, OnError | None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.udp_port: int | None = None
        self.tcp_port: int | None = None

    async def start(self, address: str, udp_port: int | None, tcp_port: int | None) -> None:
        loop = asyncio.get_running_loop()
        if udp_port is not None:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(address, udp_port)
            )
            self._udp = protocol
            self.udp_port = int(transport.get_extra_info("sockname")[1])
        if tcp_port is not None:
            server = await loop.create_server(lambda: _Tcp(self), address, tcp_port)
            self._servers.append(server)
            self.tcp_port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self._connections.values()):
            if conn.transport is not None:
                conn.transport.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        for task in list(self._tasks):
            task.cancel()

    def send(self, data: bytes, dest: Addr, on_error: OnError | None = None) -> None:
        if not _is_ip(dest.host):
            self._spawn(self._resolve_then_send(data, dest, on_error))
            return
        if dest.transport == "UDP":
            if self._udp is None or self._udp.transport is None:
                if on_error:
                    on_error()
                return
            self._udp.transport.sendto(data, (dest.host.strip("[]"), dest.port))
            return
        conn = self._connections.get(dest)
        if conn is not None and conn.write(data):
            return
        queue = self._dialling.get(dest)
        if queue is not None:
            queue.append((data, on_error))
            return
        self._dialling[dest] = [(data, on_error)]
        self._spawn(self._dial(dest))

    async def _resolve_then_send(self, data: bytes, dest: Addr, on_error: OnError | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(dest.host, dest.port)
        except OSError as exc:
            log.warning("cannot resolve %s: %s", dest.host, exc)
            if on_error:
                on_error()
            return
        self.send(data, Addr(dest.transport, str(infos[0][4][0]), dest.port), on_error)

    async def _dial(self, dest: Addr) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_connection(lambda: _Tcp(self), dest.host.strip("[]"), dest.port)
        except OSError as exc:
            log.warning("cannot connect to %s:%d: %s", dest.host, dest.port, exc)
            for _, on_error in self._dialling.pop(dest, []):
                if on_error:
                    on_error()
            return
        self._connections[dest] = protocol  # also known by the address dialled
        for data, on_error in self._dialling.pop(dest, []):
            if not protocol.write(data) and on_error:
                on_error()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
