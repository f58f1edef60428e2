"""The asyncio Diameter node: a thin driver around the sans-I/O peer state machine.

It listens and dials over TCP (TLS optional), frames bytes into messages, feeds
them to each Peer, carries out the actions the Peer returns, routes requests to
peers, matches answers to pending requests, validates what arrives and
dispatches application requests to the handlers registered for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from charging.diameter.constants import Command, DisconnectCause, ResultCode, is_protocol_error
from charging.diameter.errors import DiameterError, MessageFormatError
from charging.diameter.framing import DEFAULT_MAX_MESSAGE, Framer, FramingError
from charging.diameter.message import FLAG_ERROR, FLAG_REQUEST, FLAG_RETRANSMIT, HEADER_LENGTH, Message
from charging.diameter.peer import (
    Action,
    Closed,
    Connect,
    Deliver,
    Disconnect,
    Failback,
    Failover,
    IdSource,
    LocalIdentity,
    Peer,
    Send,
    Timers,
    advertised_applications,
    capabilities_avps,
    common_applications,
)
from charging.diameter.validation import Validator, required_answer_echoes

log = logging.getLogger("charging.diameter")

Handler = Callable[[Message, Peer], Awaitable[Message | None]]
MessageObserver = Callable[[str, Peer | None, Message], None]


class NoRouteError(DiameterError):
    def __init__(self, message: str) -> None:
        super().__init__(ResultCode.DIAMETER_UNABLE_TO_DELIVER, message)


class RequestTimeout(TimeoutError):
    """No answer came within the request timeout (RFC 4006's Tx, for credit control)."""


@dataclass(slots=True)
class PeerConfig:
    """A peer this node knows: it may connect to us, and we dial it if ``port`` is set."""

    host: str
    realm: str = ""
    address: str | None = None  # dial target and, if set, the only source address accepted
    port: int | None = None
    tls: bool = False
    dial: bool = True


@dataclass(slots=True)
class TlsConfig:
    certfile: str
    keyfile: str
    cafile: str | None = None
    verify_peer: bool = True


@dataclass(slots=True)
class NodeConfig:
    identity: LocalIdentity
    listen: list[tuple[str, int]] = field(default_factory=list)  # (address, port); port 0 picks one
    tls_listen: list[tuple[str, int]] = field(default_factory=list)
    tls: TlsConfig | None = None
    peers: list[PeerConfig] = field(default_factory=list)
    allowed_realms: list[str] = field(default_factory=list)
    allowed_networks: list[str] = field(default_factory=list)  # e.g. "127.0.0.0/8": unknown hosts from here
    timers: Timers = field(default_factory=Timers)
    strict: bool = False
    request_timeout: float = 5.0
    duplicate_window: float = 10.0
    max_message: int = DEFAULT_MAX_MESSAGE
    client_auth_applications: frozenset[int] = frozenset()  # applications used only as a client
    client_acct_applications: frozenset[int] = frozenset()


class _Connection(asyncio.Protocol):
    __slots__ = ("addr", "closed", "framer", "id", "initiator", "node", "outgoing", "peer", "transport")

    def __init__(self, node: DiameterNode, conn_id: int, initiator: bool, peer: Peer | None = None) -> None:
        self.node = node
        self.id = conn_id
        self.initiator = initiator
        self.peer = peer
        self.framer = Framer(node.config.max_message)
        self.transport: asyncio.Transport | None = None
        self.addr: str = ""
        self.closed = False
        self.outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's class does not subclass it
        peername = transport.get_extra_info("peername")
        self.addr = peername[0] if peername else ""
        self.node._connections[self.id] = self

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except FramingError as exc:
            self.node._on_framing_error(self, exc)
            return
        on_frame = self.node._on_frame
        for raw in frames:
            on_frame(self, raw)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.node._on_connection_lost(self)

    def write(self, data: bytes) -> None:
        """Queue a message; everything queued in one loop iteration leaves in one send.

        Under load many answers are ready in the same iteration: one system call (and one wake-up of
        the peer) for all of them instead of one each.
        """
        if self.transport is None or self.closed:
            return
        if not self.outgoing:
            asyncio.get_running_loop().call_soon(self.flush)
        self.outgoing.append(data)

    def flush(self) -> None:
        if self.outgoing and self.transport is not None and not self.closed:
            data = self.outgoing[0] if len(self.outgoing) == 1 else b"".join(self.outgoing)
            self.outgoing.clear()
            self.transport.write(data)
        else:
            self.outgoing.clear()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.flush()  # what was queued before the close still goes out (a CEA with 3010, a DPA)
            self.transport.close()


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[Message]
    request: Message
    peer: Peer
    app_id: int
    timer: asyncio.TimerHandle | None = None
    attempts: int = 1


class DiameterNode:
    """A Diameter node: peers, routing, dispatch.

    ``register(app_id, command_code, handler)`` before ``start()``; the applications
    with handlers are advertised in CER/CEA along with the configured client ones.
    """

    def __init__(self, config: NodeConfig, clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self._clock = clock
        self._handlers: dict[tuple[int, int], Handler] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: dict[int, _Connection] = {}
        self._conn_seq = 0
        self.peers: dict[str, Peer] = {}
        self._peer_configs: dict[str, PeerConfig] = {p.host.lower(): p for p in config.peers}
        self._pending: dict[int, _Pending] = {}
        self._answer_cache: OrderedDict[tuple[int, str], tuple[float, bytes | asyncio.Future[bytes]]] = OrderedDict()
        self._validator = Validator(strict=config.strict)
        self._ids = IdSource(start_time=time.time())
        self._timer_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._networks = [ipaddress.ip_network(n, strict=False) for n in config.allowed_networks]
        self._rr = 0
        self.observers: list[MessageObserver] = []
        self.identity = config.identity
        self.bound: list[tuple[str, int]] = []

    # -- set-up ----------------------------------------------------------------------------------
    def register(self, app_id: int, command_code: int, handler: Handler) -> None:
        self._handlers[(app_id, command_code)] = handler

    def _advertised_identity(self) -> LocalIdentity:
        ident = self.config.identity
        server_apps = {app for app, _ in self._handlers}
        auth = set(ident.auth_applications) | set(self.config.client_auth_applications)
        acct = set(ident.acct_applications) | set(self.config.client_acct_applications)
        for app in server_apps:
            (acct if app == 3 else auth).add(app)
        return LocalIdentity(
            origin_host=ident.origin_host,
            origin_realm=ident.origin_realm,
            host_ip_addresses=ident.host_ip_addresses,
            vendor_id=ident.vendor_id,
            product_name=ident.product_name,
            firmware_revision=ident.firmware_revision,
            origin_state_id=ident.origin_state_id,
            auth_applications=frozenset(auth),
            acct_applications=frozenset(acct),
            supported_vendors=ident.supported_vendors,
            vendor_specific=ident.vendor_specific,
        )

    def now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def start(self) -> None:
        self.identity = self._advertised_identity()
        loop = asyncio.get_running_loop()
        for host, port in self.config.listen:
            server = await loop.create_server(lambda: self._new_connection(False), host, port)
            self._servers.append(server)
            self.bound += [s.getsockname()[:2] for s in server.sockets]
        if self.config.tls_listen:
            ctx = self._server_ssl()
            for host, port in self.config.tls_listen:
                server = await loop.create_server(lambda: self._new_connection(False), host, port, ssl=ctx)
                self._servers.append(server)
                self.bound += [s.getsockname()[:2] for s in server.sockets]
        self._timer_task = asyncio.create_task(self._timer_loop())
        now = self.now()
        for pc in self.config.peers:
            if pc.dial and pc.port is not None and pc.address is not None:
                peer = self._peer(pc.host, dial=True)
                self._run(peer, peer.start(now))

    @property
    def port(self) -> int:
        """The first listening port (handy when configured with port 0)."""
        return self.bound[0][1]

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, send DPR to every open peer, wait for DPAs, close everything."""
        self._stopping = True
        for server in self._servers:
            server.close()
        # In-flight requests finish and their answers leave before the peers are told goodbye.
        deadline = time.monotonic() + timeout
        while any(not t.done() for t in self._tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        now = self.now()
        for peer in list(self.peers.values()):
            self._run(peer, peer.stop(now, DisconnectCause.REBOOTING))
        deadline = time.monotonic() + timeout
        while any(c for c in self._connections.values() if not c.closed) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self._connections.values()):
            conn.close()
        for server in self._servers:
            await server.wait_closed()
        if self._timer_task is not None:
            self._timer_task.cancel()
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_exception(ConnectionError("node stopped"))
        self._pending.clear()
        for task in list(self._tasks):
            task.cancel()

    # -- sending -----------------------------------------------------------------------------------
    def make_answer(self, request: Message, result_code: int, avps: Iterable[tuple[str, Any]] = ()) -> Message:
        """An answer with Result-Code, Origin-Host and Origin-Realm, then ``avps``."""
        ans = request.answer(
            [
                ("Result-Code", result_code),
                ("Origin-Host", self.identity.origin_host),
                ("Origin-Realm", self.identity.origin_realm),
                *avps,
            ]
        )
        if is_protocol_error(result_code):
            ans.flags |= FLAG_ERROR
        return ans

    def new_session_id(self, optional: str = "") -> str:
        """RFC 6733 8.8: <DiameterIdentity>;<high 32 bits>;<low 32 bits>[;<optional value>]."""
        value = self._ids.next_end_to_end()
        sid = f"{self.identity.origin_host};{int(time.time())};{value}"
        return f"{sid};{optional}" if optional else sid

    async def request(self, msg: Message, peer: str | None = None, timeout: float | None = None) -> Message:
        """Send a request and wait for its answer; fails over to another peer if this one goes silent."""
        if msg.end_to_end == 0:
            msg.end_to_end = self._ids.next_end_to_end()
        target = self._route(msg, peer)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        pending = _Pending(future, msg, target, msg.app_id)
        self._send_pending(pending)
        limit = self.config.request_timeout if timeout is None else timeout
        try:
            # A timeout (or the caller's cancellation) cancels the future itself: every path that settles a
            # pending request looks whether it is done first, and the pending request goes in ``finally``.
            async with asyncio.timeout(limit):
                return await future
        except TimeoutError:
            raise RequestTimeout(f"no answer to {msg.command_name} within {limit} s") from None
        finally:
            self._pending.pop(msg.hop_by_hop, None)

    def _send_pending(self, pending: _Pending) -> None:
        msg = pending.request
        msg.hop_by_hop = self._ids.next_hop_by_hop()
        conn = self._conn_of(pending.peer)
        if conn is None:
            raise NoRouteError(f"peer {pending.peer.host} has no open connection")
        self._pending[msg.hop_by_hop] = pending
        self._send(conn, pending.peer, msg)

    def _route(self, msg: Message, peer_host: str | None) -> Peer:
        if peer_host is not None:
            peer = self.peers.get(peer_host.lower())
            if peer is None or not peer.is_open:
                raise NoRouteError(f"peer {peer_host} is not connected")
            return peer
        dest_host = msg.get("Destination-Host")
        if dest_host:
            peer = self.peers.get(dest_host.lower())
            if peer is not None and peer.is_open:
                return peer
        realm = msg.get("Destination-Realm")
        candidates = self._candidates(msg.app_id, realm, exclude=None)
        if not candidates:
            raise NoRouteError(f"no open peer for application {msg.app_id} in realm {realm!r}")
        self._rr = (self._rr + 1) % len(candidates)
        return candidates[self._rr]

    def _candidates(self, app_id: int, realm: str | None, exclude: Peer | None) -> list[Peer]:
        out = []
        for peer in self.peers.values():
            if peer is exclude or not peer.available:
                continue
            apps = peer.info.applications
            if app_id not in apps and 0xFFFFFFFF not in apps and app_id != 0:
                continue
            if realm and peer.info.origin_realm.lower() != realm.lower():
                cfg = self._peer_configs.get(peer.host)
                if cfg is None or cfg.realm.lower() != realm.lower():
                    continue
            out.append(peer)
        return out

    def _failover(self, failed: Peer) -> None:
        """RFC 3539 / RFC 6733 5.5.4: resend what the silent peer holds, T flag set."""
        for hbh, pending in list(self._pending.items()):
            if pending.peer is not failed or pending.future.done():
                continue
            alternates = self._candidates(pending.app_id, pending.request.get("Destination-Realm"), exclude=failed)
            if not alternates:
                continue
            del self._pending[hbh]
            pending.peer = alternates[0]
            pending.attempts += 1
            pending.request.flags |= FLAG_RETRANSMIT
            log.info("failover of %s from %s to %s", pending.request.command_name, failed.host, pending.peer.host)
            try:
                self._send_pending(pending)
            except NoRouteError:
                pending.future.set_exception(ConnectionError("failover found no route"))

    # -- connections ---------------------------------------------------------------------------------
    def _new_connection(self, initiator: bool, peer: Peer | None = None) -> _Connection:
        self._conn_seq += 1
        return _Connection(self, self._conn_seq, initiator, peer)

    def _conn_of(self, peer: Peer) -> _Connection | None:
        conn_id = peer.conn
        return self._connections.get(conn_id) if conn_id is not None else None

    def _server_ssl(self) -> ssl.SSLContext:
        tls = self.config.tls
        if tls is None:
            raise ValueError("tls_listen needs a tls configuration")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls.cafile)
        ctx.load_cert_chain(tls.certfile, tls.keyfile)
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.verify_peer and tls.cafile else ssl.CERT_NONE
        # Diameter peers keep one long-lived connection and never resume a TLS session: TLS 1.3
        # session tickets only cost bytes, and GnuTLS-based peers (freeDiameter) log each as an error.
        ctx.num_tickets = 0
        return ctx

    def _client_ssl(self) -> ssl.SSLContext:
        tls = self.config.tls
        if tls is None:
            raise ValueError("a TLS peer needs a tls configuration")
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.cafile)
        ctx.load_cert_chain(tls.certfile, tls.keyfile)
        ctx.check_hostname = False  # peers are named by Diameter identity, checked against the CA
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.verify_peer else ssl.CERT_NONE
        return ctx

    async def _dial(self, peer: Peer) -> None:
        cfg = self._peer_configs[peer.host]
        loop = asyncio.get_running_loop()
        assert cfg.address is not None and cfg.port is not None
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: self._new_connection(True, peer),
                    cfg.address,
                    cfg.port,
                    ssl=self._client_ssl() if cfg.tls else None,
                ),
                self.config.timers.cea_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._run(peer, peer.conn_nack(self.now(), str(exc)))
            return
        self._run(peer, peer.conn_ack(conn.id, self.now()))

    def _peer(self, host: str, dial: bool = False) -> Peer:
        key = host.lower()
        peer = self.peers.get(key)
        if peer is None:
            peer = Peer(self.identity, key, dial=dial, timers=self.config.timers, ids=self._ids)
            self.peers[key] = peer
        return peer

    def _on_connection_lost(self, conn: _Connection) -> None:
        self._connections.pop(conn.id, None)
        if conn.peer is not None:
            self._run(conn.peer, conn.peer.conn_lost(conn.id, self.now()))

    def _on_framing_error(self, conn: _Connection, exc: FramingError) -> None:
        log.warning("closing connection from %s: %s", conn.addr, exc)
        if len(exc.header) == HEADER_LENGTH and exc.header[4] & 0x80:
            # Answer what can be answered from the header alone, then close (RFC 6733 7.1.5).
            flags, code = exc.header[4], int.from_bytes(exc.header[5:8], "big")
            app = int.from_bytes(exc.header[8:12], "big")
            hbh = int.from_bytes(exc.header[12:16], "big")
            e2e = int.from_bytes(exc.header[16:20], "big")
            req = Message(code, app, flags & ~FLAG_RETRANSMIT, hbh, e2e)
            self._send(conn, conn.peer, self._error_answer(req, exc.result_code, str(exc), None))
        conn.close()

    # -- receiving ------------------------------------------------------------------------------------
    def _on_frame(self, conn: _Connection, raw: bytes) -> None:
        try:
            self._on_message(conn, raw)
        except Exception:
            # Whatever a peer sends must not take the node down: log, and close this connection only.
            log.exception("failed to process a message from %s; closing the connection", conn.addr)
            conn.close()

    def _on_message(self, conn: _Connection, raw: bytes) -> None:
        try:
            msg = Message.decode(raw)
        except MessageFormatError as exc:
            log.warning("undecodable frame from %s: %s", conn.addr, exc)
            conn.close()
            return
        peer = conn.peer
        self._observe("recv", peer, msg)
        if peer is None:
            self._on_first_message(conn, msg)
            return
        if peer.i_conn != conn.id and peer.r_conn != conn.id:
            conn.close()  # a connection its peer has let go of
            return
        actions = peer.message(conn.id, msg, self.now())
        if len(actions) == 1 and type(actions[0]) is Deliver:
            self._deliver(conn, peer, msg)
        else:
            self._run(peer, actions)

    def _on_first_message(self, conn: _Connection, msg: Message) -> None:
        """An accepted connection must open with a CER; it decides which peer this is."""
        if msg.code != Command.CAPABILITIES_EXCHANGE or not msg.is_request:
            log.warning("connection from %s did not start with CER; closing", conn.addr)
            conn.close()
            return
        try:
            for note in self._validator.check(msg):
                log.info("CER from %s: %s", conn.addr, note)
        except DiameterError as exc:
            self._reject_cer(conn, msg, exc.result_code, str(exc), exc.failed_avp)
            return
        host = str(msg["Origin-Host"])
        realm = str(msg["Origin-Realm"])
        if not self._allowed(host, realm, conn.addr):
            log.warning("unknown peer %s (realm %s) from %s refused", host, realm, conn.addr)
            self._reject_cer(conn, msg, ResultCode.DIAMETER_UNKNOWN_PEER, f"{host} is not a configured peer", None)
            return
        remote_apps = advertised_applications(msg)
        if not common_applications(self.identity, remote_apps):
            self._reject_cer(conn, msg, ResultCode.DIAMETER_NO_COMMON_APPLICATION, "no common application", None)
            return
        peer = self._peer(host)
        conn.peer = peer
        self._run(peer, peer.r_conn_cer(conn.id, msg, self.now()))

    def _allowed(self, host: str, realm: str, addr: str) -> bool:
        cfg = self._peer_configs.get(host.lower())
        if cfg is not None:
            return cfg.address is None or _same_address(cfg.address, addr)
        if any(realm.lower() == r.lower() for r in self.config.allowed_realms):
            return True
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    def _reject_cer(self, conn: _Connection, cer: Message, code: int, text: str, failed: bytes | None) -> None:
        cea = self._error_answer(cer, code, text, failed)
        for name, value in capabilities_avps(self.identity):
            if name not in ("Origin-Host", "Origin-Realm"):
                cea.add(name, value)
        self._send(conn, None, cea)
        conn.close()

    def _run(self, peer: Peer, actions: list[Action]) -> None:
        for action in actions:
            kind = type(action)
            if kind is Send:
                assert isinstance(action, Send)
                conn = self._connections.get(action.conn)
                if conn is not None:
                    self._send(conn, peer, action.message)
            elif kind is Deliver:
                assert isinstance(action, Deliver)
                conn = self._connections.get(action.conn)
                if conn is not None:
                    self._deliver(conn, peer, action.message)
            elif kind is Disconnect:
                assert isinstance(action, Disconnect)
                conn = self._connections.get(action.conn)
                if conn is not None:
                    conn.close()
            elif kind is Connect:
                if not self._stopping:
                    self._spawn(self._dial(peer))
            elif kind is Failover:
                log.warning("peer %s unavailable: failing over its pending requests", peer.host)
                self._failover(peer)
            elif kind is Failback:
                log.info("peer %s is available", peer.host)
            elif kind is Closed:
                assert isinstance(action, Closed)
                log.info("peer %s closed: %s", peer.host, action.reason)
                self._fail_pending_of(peer)
        self._wake.set()

    def _fail_pending_of(self, peer: Peer) -> None:
        """The peer's connection is gone: resend what can go elsewhere, fail the rest."""
        self._failover(peer)
        for pending in list(self._pending.values()):
            if pending.peer is peer and not pending.future.done():
                pending.future.set_exception(ConnectionError(f"peer {peer.host} closed"))

    def _deliver(self, conn: _Connection, peer: Peer, msg: Message) -> None:
        if msg.flags & FLAG_REQUEST:
            self._on_request(conn, peer, msg)
            return
        pending = self._pending.get(msg.hop_by_hop)
        if pending is None or pending.peer is not peer:
            log.debug("answer with unknown hop-by-hop %#x from %s dropped", msg.hop_by_hop, peer.host)
            return
        del self._pending[msg.hop_by_hop]
        if not pending.future.done():
            pending.future.set_result(msg)

    def _on_request(self, conn: _Connection, peer: Peer, msg: Message) -> None:
        now = self.now()
        key = (msg.end_to_end, peer.info.origin_host)
        cached = self._answer_cache.get(key)
        if cached is not None:
            _, answer = cached
            log.info(
                "duplicate %s e2e=%#x from %s answered again",
                msg.command_name,
                msg.end_to_end,
                peer.host,
                extra=_log_context(msg, peer),
            )
            if isinstance(answer, bytes):
                self._send_bytes(conn, peer, _with_hbh(answer, msg.hop_by_hop))
            else:
                hbh = msg.hop_by_hop

                def resend(done: asyncio.Future[bytes]) -> None:
                    if not done.cancelled():
                        self._send_bytes(conn, peer, _with_hbh(done.result(), hbh))

                answer.add_done_callback(resend)
            return
        handler = self._handlers.get((msg.app_id, msg.code))
        if handler is None:
            if not any(app == msg.app_id for app, _ in self._handlers):
                code = ResultCode.DIAMETER_APPLICATION_UNSUPPORTED
            else:
                code = ResultCode.DIAMETER_COMMAND_UNSUPPORTED
            self._send(conn, peer, self._error_answer(msg, code, "not served here", None))
            return
        try:
            notes = self._validator.check(msg)
        except DiameterError as exc:
            log.warning(
                "%s from %s rejected: %s (%d)",
                msg.command_name,
                peer.host,
                exc,
                exc.result_code,
                extra=_log_context(msg, peer),
            )
            self._send(conn, peer, self._error_answer(msg, exc.result_code, str(exc), exc.failed_avp))
            return
        if notes:
            log.info(
                "%s from %s served despite: %s",
                msg.command_name,
                peer.host,
                "; ".join(notes),
                extra=_log_context(msg, peer),
            )
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._answer_cache[key] = (now + self.config.duplicate_window, future)
        self._spawn(self._handle(conn, peer, msg, handler, future, key))

    async def _handle(
        self,
        conn: _Connection,
        peer: Peer,
        msg: Message,
        handler: Handler,
        future: asyncio.Future[bytes],
        key: tuple[int, str],
    ) -> None:
        try:
            answer = await handler(msg, peer)
        except DiameterError as exc:
            answer = self._error_answer(msg, exc.result_code, str(exc), exc.failed_avp)
        except Exception:
            log.exception("handler for %s failed", msg.command_name)
            answer = self._error_answer(msg, ResultCode.DIAMETER_UNABLE_TO_COMPLY, "internal error", None)
        if answer is None:
            self._answer_cache.pop(key, None)
            future.cancel()
            return
        data = self._send(conn, peer, answer)
        self._answer_cache[key] = (self.now() + self.config.duplicate_window, data)
        self._answer_cache.move_to_end(key)
        future.set_result(data)

    def _error_answer(self, req: Message, code: int, text: str, failed: bytes | None) -> Message:
        """RFC 6733 7.2: E bit for protocol errors; Failed-AVP; the answer's required echoes kept."""
        avps: list[tuple[str, Any]] = []
        if not is_protocol_error(code):
            for name in required_answer_echoes(req.code):
                try:
                    found = req.avp(name)
                    if found is not None:
                        avps.append((name, found.value))
                except DiameterError:
                    pass  # the broken AVP itself: Failed-AVP shows it
        if text:
            avps.append(("Error-Message", text[:200]))
        try:
            ans = self.make_answer(req, code, avps)
        except MessageFormatError:
            # The request's AVPs cannot even be split: answer from the header alone.
            ans = Message(req.code, req.app_id, req.flags & 0x40, req.hop_by_hop, req.end_to_end)
            ans.add("Result-Code", code).add("Origin-Host", self.identity.origin_host)
            ans.add("Origin-Realm", self.identity.origin_realm)
            if is_protocol_error(code):
                ans.flags |= FLAG_ERROR
        if failed:
            ans.add("Failed-AVP", [failed])
        return ans

    def _send(self, conn: _Connection, peer: Peer | None, msg: Message) -> bytes:
        """Write a message on a connection; every message that leaves the node passes here and is observed."""
        data = msg.to_bytes()
        if self.observers:
            self._observe("send", peer, msg)
        conn.write(data)
        return data

    def _send_bytes(self, conn: _Connection, peer: Peer | None, data: bytes) -> None:
        """Write an already encoded message (a cached answer), observed like any other."""
        if self.observers:
            self._observe("send", peer, Message.decode(data))
        conn.write(data)

    def _observe(self, direction: str, peer: Peer | None, msg: Message) -> None:
        for observer in self.observers:
            observer(direction, peer, msg)

    # -- timers -------------------------------------------------------------------------------------------
    async def _timer_loop(self) -> None:
        while True:
            now = self.now()
            deadlines = [d for p in self.peers.values() if (d := p.next_deadline()) is not None]
            for peer in list(self.peers.values()):
                deadline = peer.next_deadline()
                if deadline is not None and deadline <= now:
                    self._run(peer, peer.timer(now))
            self._expire_answers(now)
            wait = min(deadlines) - now if deadlines else 1.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.005, min(wait, 1.0)))

    def _expire_answers(self, now: float) -> None:
        cache = self._answer_cache
        while cache:
            key, (expiry, answer) = next(iter(cache.items()))
            if expiry > now or not isinstance(answer, bytes):
                break
            del cache[key]

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _log_context(msg: Message, peer: Peer) -> dict[str, str]:
    """Session-Id and ICID for the log line of a request, when the request lets them be read."""
    context = {"peer": peer.host}
    try:
        session = msg.get("Session-Id")
        if session:
            context["session_id"] = session
        icid = msg.find("Service-Information/IMS-Information/IMS-Charging-Identifier")
        if icid:
            context["icid"] = icid
    except DiameterError:
        pass  # a broken message: the line says what is broken
    return context


def _with_hbh(answer: bytes, hop_by_hop: int) -> bytes:
    """A cached answer re-sent for a retransmission carries the retransmission's Hop-by-Hop id."""
    return answer[:12] + hop_by_hop.to_bytes(4, "big") + answer[16:]


def _same_address(configured: str, actual: str) -> bool:
    try:
        return ipaddress.ip_address(configured) == ipaddress.ip_address(actual)
    except ValueError:
        return configured == actual
