"""A reusable asyncio Diameter load generator built on the project's own node as client.

``run_load`` opens ``connections`` client nodes (one TCP connection and one Origin-Host
each) to a server (or to several server processes in turn), runs ``in_flight`` workers per
connection, and has every worker play ``scenario(ctx)`` over and over until ``seconds`` are up.
A scenario sends requests with ``await ctx.send(msg)``, which times each request and counts it;
an answer whose Result-Code is not 2001 counts as an error unless the scenario says it expects it.

Figures reported: requests per second over the measured window, p50/p99 latency, errors.
Used by ``bench/ocf_load.py``; the CDF benchmark can drive ACRs through it the same way.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from charging.diameter import Message
from charging.diameter.node import DiameterNode, NodeConfig, PeerConfig
from charging.diameter.peer import LocalIdentity, Timers


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, one per measured request
    results: Counter[int] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000
        cuts = statistics.quantiles(self.latencies, n=1000, method="inclusive")
        return cuts[min(len(cuts) - 1, max(0, round(q * 1000) - 1))] * 1000

    def add(self, other: LoadResult) -> None:
        """Count another measurement (of the same server) in with this one."""
        self.requests += other.requests
        self.errors += other.errors
        self.seconds += other.seconds
        self.latencies.extend(other.latencies)
        self.results.update(other.results)
        self.error_samples.extend(other.error_samples[: max(0, 5 - len(self.error_samples))])

    def summary(self, name: str) -> str:
        return (
            f"{name}: {self.requests} requests in {self.seconds:.1f} s = {self.rate:,.0f}/s; "
            f"p50 {self.percentile_ms(0.5):.2f} ms, p99 {self.percentile_ms(0.99):.2f} ms; "
            f"errors {self.errors}; results {dict(self.results)}"
        )


class Context:
    """What a scenario gets: a way to send and a sequence for unique values."""

    def __init__(self, load: _Load, node: DiameterNode, server_host: str, worker: int) -> None:
        self._load = load
        self.node = node
        self.server_host = server_host
        self.origin_host = node.config.identity.origin_host
        self.worker = worker

    def next(self) -> int:
        return next(self._load.counter)

    async def send(self, msg: Message, expect: tuple[int, ...] = (2001,)) -> Message:
        load = self._load
        started = time.perf_counter()
        try:
            answer = await self.node.request(msg, peer=self.server_host, timeout=load.timeout)
        except Exception as exc:
            if load.measuring:
                load.result.errors += 1
                if len(load.result.error_samples) < 5:
                    load.result.error_samples.append(repr(exc))
            raise
        if load.measuring:
            result = load.result
            result.latencies.append(time.perf_counter() - started)
            result.requests += 1
            code = result_code(answer)
            result.results[code] += 1
            if code not in expect:
                result.errors += 1
                if len(result.error_samples) < 5:
                    result.error_samples.append(f"Result-Code {code} to {msg.command_name}")
        return answer


Scenario = Callable[[Context], Awaitable[None]]


def result_code(answer: Message) -> int:
    """The answer's Result-Code (0 when it has none), read off its AVP headers: splitting every answer into
    AVP objects cost the load generator, which shares the machine with the server, a tenth of its CPU."""
    return answer.result_code() or 0


@dataclass
class _Load:
    timeout: float
    result: LoadResult = field(default_factory=LoadResult)
    measuring: bool = False
    stopping: bool = False
    counter: itertools.count[int] = field(default_factory=itertools.count)


def client(server_port: int, origin_host: str, server_host: str, realm: str = "bench", app: int = 4) -> DiameterNode:
    return DiameterNode(
        NodeConfig(
            LocalIdentity(origin_host, realm),
            peers=[PeerConfig(server_host, realm, "127.0.0.1", server_port)],
            client_auth_applications=frozenset({app}),
            timers=Timers(watchdog=30.0),
            request_timeout=10.0,
        )
    )


def client_hosts(connections: int, prefix: str = "client") -> list[str]:
    return [f"{prefix}{i}.bench" for i in range(connections)]


async def run_load(
    server_port: int | Sequence[int],
    server_host: str,
    scenario: Scenario,
    *,
    connections: int = 4,
    in_flight: int = 8,
    seconds: float = 10.0,
    warmup: float = 2.0,
    timeout: float = 10.0,
) -> LoadResult:
    load = _Load(timeout)
    # Several ports: server processes sharing one database, the connections spread over them in turn.
    ports = [server_port] if isinstance(server_port, int) else list(server_port)
    nodes = [client(ports[i % len(ports)], host, server_host) for i, host in enumerate(client_hosts(connections))]
    for node in nodes:
        await node.start()
    deadline = time.monotonic() + 10
    while not all(server_host in n.peers and n.peers[server_host].available for n in nodes):
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not connect all clients to {server_host}:{server_port}")
        await asyncio.sleep(0.05)

    async def worker(ctx: Context) -> None:
        while not load.stopping:
            try:
                await scenario(ctx)
            except Exception:
                await asyncio.sleep(0.01)  # counted already; keep the load on

    contexts = [Context(load, node, server_host, w) for node in nodes for w in range(in_flight)]
    tasks = [asyncio.create_task(worker(ctx)) for ctx in contexts]
    await asyncio.sleep(warmup)
    load.measuring = True
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    load.measuring = False
    load.result.seconds = time.perf_counter() - started
    load.stopping = True
    await asyncio.wait(tasks, timeout=timeout + 5)
    for task in tasks:
        task.cancel()
    for node in nodes:
        await node.stop(timeout=2.0)
    return load.result
