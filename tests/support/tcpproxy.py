"""A small TCP proxy for simulating network outages between Kafka clients and a broker.

All work happens in daemon threads, so the proxy is driven the same way from synchronous tests and from
asyncio tests (``cut()``/``restore()`` return immediately and never touch an event loop)::

    with TcpProxy("127.0.0.1", broker_port) as proxy:
        ...                    # clients connect to proxy.address
        proxy.cut()            # reset every connection, reset new ones until restore()
        proxy.cut("blackhole") # or: keep connections open but forward nothing (a silent partition)
        proxy.restore()

Kafka clients connect to the address a broker *advertises* in its metadata, so the broker must advertise the
proxy's port (``EmbeddedBroker(port=p, advertised_port=proxy.port)``); otherwise only the bootstrap
connection goes through the proxy.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Literal, Self

CutMode = Literal["reset", "blackhole"]

_CHUNK = 65536
_ACCEPT_POLL = 0.05


def _abort(sock: socket.socket) -> None:
    """Close ``sock`` with an RST (SO_LINGER 0) after waking any thread blocked on it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class _Link:
    """One proxied connection: a client socket, its upstream socket and two pump threads."""

    def __init__(self, proxy: TcpProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.closed = threading.Event()

    def connect(self) -> bool:
        try:
            self.upstream = socket.create_connection(self.proxy.target, timeout=self.proxy.connect_timeout)
        except OSError:
            self.close()
            return False
        if self.closed.is_set():  # cut while connecting
            _abort(self.upstream)
            return False
        self.upstream.settimeout(None)
        for src, dst, name in ((self.client, self.upstream, "c2s"), (self.upstream, self.client, "s2c")):
            threading.Thread(target=self._pump, args=(src, dst), name=f"tcpproxy-{name}", daemon=True).start()
        return True

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self.closed.is_set():
                data = src.recv(_CHUNK)
                if not data:
                    break
                # While blackholed the data is held here (and TCP back-pressure holds the rest).
                while not self.proxy._flowing.wait(0.05):
                    if self.closed.is_set():
                        return
                if self.closed.is_set():
                    return
                dst.sendall(data)
                self.proxy._count_bytes(len(data))
        except OSError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        _abort(self.client)
        if self.upstream is not None:
            _abort(self.upstream)
        self.proxy._forget(self)


class TcpProxy:
    """Forward TCP connections from ``127.0.0.1:<port>`` (a free port by default) to ``target``."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.target = (target_host, target_port)
        self.connect_timeout = connect_timeout
        self._listener = socket.create_server((listen_host, listen_port))
        self._listener.settimeout(_ACCEPT_POLL)
        self.host: str = listen_host
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._held: list[socket.socket] = []  # accepted while blackholed, connected upstream on restore()
        self._mode: CutMode | None = None
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self.accepted = 0  # connections forwarded to the target
        self.rejected = 0  # connections reset because the proxy was cut
        self.bytes_forwarded = 0
        self._thread = threading.Thread(target=self._accept_loop, name=f"tcpproxy-{self.port}", daemon=True)
        self._thread.start()

    # -- public API -----------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` to give to clients."""
        return f"{self.host}:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._mode is not None

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._links)

    def cut(self, mode: CutMode = "reset") -> None:
        """Simulate an outage until :meth:`restore`.

        ``"reset"``: close every current connection with an RST and reset each new one right after accepting
        it (clients see errors at once). ``"blackhole"``: keep connections open but forward nothing and hold
        new connections unanswered (clients see timeouts); forwarding resumes on :meth:`restore`.
        """
        with self._lock:
            self._mode = mode
            self._flowing.clear()
            links = list(self._links)
        if mode == "reset":
            for link in links:
                link.close()

    def restore(self) -> None:
        """End the outage: forward again, and connect connections held during a blackhole upstream."""
        with self._lock:
            self._mode = None
            self._flowing.set()
            held, self._held = self._held, []
        if held:  # connecting upstream may block briefly: keep restore() itself non-blocking
            threading.Thread(target=self._dispatch_all, args=(held,), name="tcpproxy-restore", daemon=True).start()

    def close(self) -> None:
        """Stop listening and drop every connection; idempotent and quick (< 0.5 s)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._flowing.set()
        self._thread.join(1.0)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            links = list(self._links)
            held, self._held = self._held, []
        for link in links:
            link.close()
        for client in held:
            _abort(client)

    def wait_for_connections(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` connections have been forwarded in total."""
        deadline = time.monotonic() + timeout
        while self.accepted < count:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TcpProxy {self.address} -> {self.target[0]}:{self.target[1]} mode={self._mode or 'open'}>"

    # -- internals ------------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closed.is_set():
                    return
                time.sleep(_ACCEPT_POLL)
                continue
            client.settimeout(None)
            self._dispatch(client)

    def _dispatch(self, client: socket.socket) -> None:
        """Forward, hold or reset a new connection depending on the current mode (decided under the lock, so
        a concurrent cut() either sees the new link or the link sees the cut)."""
        link = _Link(self, client)
        with self._lock:
            mode = "closed" if self._closed.is_set() else self._mode
            if mode is None:
                self._links.add(link)
            elif mode == "blackhole":
                self._held.append(client)
                return
            else:
                self.rejected += 1
        if mode is not None:
            _abort(client)
            return
        if link.connect():
            with self._lock:
                self.accepted += 1

    def _dispatch_all(self, clients: list[socket.socket]) -> None:
        for client in clients:
            self._dispatch(client)

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _count_bytes(self, count: int) -> None:
        with self._lock:
            self.bytes_forwarded += count
