"""``charging serve``: the CDF, the OCF and billing in one process, or any subset of them.

Start-up: settings → logging → database (migrated when configured) → Kafka (the
embedded broker when none is configured and a role needs one) → the Diameter node
with every role's handlers → the roles' background work → the HTTP API.  It then
prints where it listens.

Shutdown on SIGTERM or SIGINT: stop accepting (listeners and HTTP closed), let
in-flight requests finish, send DPR to every peer, then stop the roles in reverse
order so that the CDF flushes its outbox and billing drains what was published,
and only then stop the embedded broker.  A second signal exits at once: every
write is a committed transaction or nothing, so an immediate exit corrupts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from kafka import TopicPartition

from charging import eventloop
from charging.broker import EmbeddedBroker, create_topic
from charging.clock import Clock, SystemClock
from charging.config import Role, Settings
from charging.db import make_engine, migrate
from charging.diameter.message import Message
from charging.diameter.node import DiameterNode, NodeConfig, PeerConfig, TlsConfig
from charging.diameter.peer import LocalIdentity, Peer, Timers
from charging.logs import setup_logging
from charging.metrics import Registry
from charging.service import Service, ServiceContext
from charging.web import ROLE_ADMIN, ROLE_READ, ApiAuth, OpenApi, make_app, serve_openapi

log = logging.getLogger("charging.serve")

_KAFKA_ROLES = {"cdf", "billing"}
_DIAMETER_ROLES = {"cdf", "ocf"}


def node_config(settings: Settings) -> NodeConfig:
    d = settings.diameter
    identity = LocalIdentity(
        origin_host=d.origin_host,
        origin_realm=d.origin_realm,
        host_ip_addresses=tuple(d.host_ip_addresses),
        product_name="charging",
        origin_state_id=int(time.time()) & 0xFFFFFFFF,
        supported_vendors=frozenset({10415}),
    )
    tls = TlsConfig(d.tls.certfile, d.tls.keyfile, d.tls.cafile, d.tls.verify_peer) if d.tls else None
    return NodeConfig(
        identity=identity,
        listen=[(d.listen_address, d.port)],
        tls_listen=[(d.listen_address, d.tls_port)] if d.tls_port is not None else [],
        tls=tls,
        peers=[PeerConfig(p.host, p.realm, p.address, p.port, p.tls, p.dial) for p in d.peers],
        allowed_realms=list(d.allowed_realms),
        allowed_networks=list(d.allowed_networks),
        timers=Timers(watchdog=d.watchdog_seconds),
        strict=d.strict,
        request_timeout=d.request_timeout_seconds,
        duplicate_window=d.duplicate_window_seconds,
    )


class DiameterMetrics:
    """Counts requests by command and Result-Code and times them, from the node's message observer."""

    def __init__(self, registry: Registry) -> None:
        self.requests = registry.counter(
            "charging_diameter_requests_total", "Diameter requests answered", ["command", "result_code"]
        )
        self.latency = registry.histogram(
            "charging_diameter_request_seconds", "Time from a request's arrival to its answer", ["command"]
        )
        self._arrivals: dict[tuple[str, int], float] = {}

    def observe(self, direction: str, peer: Peer | None, msg: Message) -> None:
        host = peer.host if peer is not None else ""
        if direction == "recv" and msg.is_request:
            self._arrivals[(host, msg.hop_by_hop)] = time.perf_counter()
        elif direction == "send" and not msg.is_request:
            started = self._arrivals.pop((host, msg.hop_by_hop), None)
            command = msg.command_name
            code = msg.result_code()
            result = "none" if code is None else str(code)
            self.requests.inc(command, result)
            if started is not None:
                self.latency.observe(time.perf_counter() - started, command)
            if len(self._arrivals) > 100_000:  # requests that never got an answer must not pile up
                self._arrivals.clear()


class Server:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = Registry()
        self.broker: EmbeddedBroker | None = None
        self.node: DiameterNode | None = None
        self.services: list[Service] = []
        self.runner: web.AppRunner | None = None
        self.http_port: int | None = None
        self.kafka_bootstrap: str | None = None
        self.engine: Any = None
        self._stopping = False
        self._topic_task: asyncio.Task[None] | None = None

    @property
    def roles(self) -> list[Role]:
        return list(dict.fromkeys(self.settings.roles))

    async def start(self) -> None:
        s = self.settings
        self.engine = make_engine(s.database.url, pool_size=s.database.pool_size)
        if s.database.migrate_on_start:
            await asyncio.to_thread(migrate, self.engine)
        if _KAFKA_ROLES & set(self.roles):
            # Started from the main thread so the kernel kills it if this process dies (PR_SET_PDEATHSIG).
            self.kafka_bootstrap = s.kafka.bootstrap or self._start_broker()
            if self.broker is not None:
                await asyncio.to_thread(self._ensure_topics)
            else:
                # An external cluster may be down at start-up; the CDF keeps answering with CDRs queued in its
                # outbox, so topics are created in the background as soon as the cluster answers.
                self._topic_task = asyncio.create_task(self._ensure_topics_eventually())
        if _DIAMETER_ROLES & set(self.roles):
            self.node = DiameterNode(node_config(s))
            self.node.observers.append(DiameterMetrics(self.metrics).observe)
        ctx = ServiceContext(
            settings=s,
            engine=self.engine,
            node=self.node,
            kafka_bootstrap=self.kafka_bootstrap,
            clock=self.clock,
            metrics=self.metrics,
            node_id=s.node_id,
        )
        for role in self.roles:
            module = importlib.import_module(f"{role}.service")
            self.services.append(module.create_service(ctx))
        if self.node is not None:
            await self.node.start()
        for service in self.services:
            await service.start()
        await self._start_http()

    def _start_broker(self) -> str:
        port = self.settings.kafka.embedded_port or None
        self.broker = EmbeddedBroker(port=port).start()
        return self.broker.bootstrap

    async def _ensure_topics_eventually(self) -> None:
        delay = 1.0
        while True:
            try:
                await asyncio.to_thread(self._ensure_topics)
                return
            except Exception as exc:
                log.warning(
                    "Kafka at %s not ready for topic creation (%s); retrying in %.0f s",
                    self.kafka_bootstrap,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _ensure_topics(self) -> None:
        k = self.settings.kafka
        assert self.kafka_bootstrap is not None
        for topic in (k.cdr_topic, k.dead_letter_topic):
            create_topic(self.kafka_bootstrap, topic, partitions=k.partitions, exist_ok=True)

    async def _start_http(self) -> None:
        h = self.settings.http
        tokens = {t: ROLE_READ for t in h.read_tokens} | {t: ROLE_ADMIN for t in h.admin_tokens}
        app = make_app(ApiAuth(tokens), max_body=h.max_body_bytes)
        spec = OpenApi(title="charging")
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        for service in self.services:
            service.add_routes(app, spec)
        serve_openapi(app, spec)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, h.listen_address, h.port)
        await site.start()
        for address in self.runner.addresses:  # the bound port, also when configured as 0
            self.http_port = int(address[1])
            break

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "roles": self.roles})

    async def _ready(self, request: web.Request) -> web.Response:
        states = {s.name: s.ready() for s in self.services}
        if self.node is not None:
            states["diameter"] = bool(self.node.bound)
        ok = all(states.values()) and not self._stopping
        return web.json_response({"ready": ok, "services": states}, status=200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.exposition(), content_type="text/plain", charset="utf-8")

    def describe(self) -> list[str]:
        lines = [f"charging serving roles {', '.join(self.roles)} (node id {self.settings.node_id})"]
        if self.node is not None:
            d = self.settings.diameter
            for host, port in self.node.bound:
                lines.append(f"  Diameter  {host}:{port}  Origin-Host {d.origin_host}, realm {d.origin_realm}")
        if self.http_port is not None:
            lines.append(
                f"  HTTP      http://{self.settings.http.listen_address}:{self.http_port}/  (/health, /metrics)"
            )
        if self.kafka_bootstrap:
            kind = "embedded broker" if self.broker is not None else "Kafka"
            lines.append(f"  Kafka     {self.kafka_bootstrap} ({kind}), topic {self.settings.kafka.cdr_topic}")
        lines.append(f"  Database  {_redact(self.settings.database.url)}")
        if self.node is not None:
            port = self.node.bound[0][1]
            lines.append(
                f"  Send it a sample trace:  charging replay examples/traces/ims-call.jsonl --target 127.0.0.1:{port}"
            )
        return lines

    def endpoints(self) -> dict[str, Any]:
        """Where this process listens, for scripts and tests (``--ready-file``)."""
        return {
            "roles": self.roles,
            "diameter": [list(b) for b in self.node.bound] if self.node is not None else [],
            "http": f"http://{self.settings.http.listen_address}:{self.http_port}" if self.http_port else None,
            "kafka": self.kafka_bootstrap,
            "embedded_broker": self.broker is not None,
            "database": _redact(self.settings.database.url),
            "pid": os.getpid(),
        }

    async def stop(self) -> None:
        self._stopping = True
        if self._topic_task is not None:
            self._topic_task.cancel()
        if self.node is not None:
            await self.node.stop()
        for service in reversed(self.services):
            if service.name == "billing" and self.broker is not None and "cdf" in self.roles:
                # The embedded broker keeps messages in memory only: billing must have taken every
                # CDR the CDF published before the broker goes, or they would be gone with it.
                await asyncio.to_thread(self._wait_billing_caught_up, 30.0)
            try:
                await service.stop()
            except Exception:
                log.exception("stopping %s failed", service.name)
        if self.runner is not None:
            await self.runner.cleanup()
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
        if self.engine is not None:
            self.engine.dispose()

    def _wait_billing_caught_up(self, timeout: float) -> None:
        from kafka import KafkaConsumer

        assert self.kafka_bootstrap is not None
        topic = self.settings.kafka.cdr_topic
        # A consumer in billing's group that never subscribes: it only reads the group's committed offsets.
        reader = KafkaConsumer(
            bootstrap_servers=self.kafka_bootstrap,
            group_id=self.settings.billing.consumer_group,
            enable_auto_commit=False,
        )
        deadline = time.monotonic() + timeout
        try:
            partitions = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
            while True:
                ends = reader.end_offsets(partitions)
                behind = sum(max(end - (reader.committed(tp) or 0), 0) for tp, end in ends.items())
                if behind == 0:
                    return
                if time.monotonic() > deadline:
                    log.error("billing is still %d CDRs behind the embedded broker at shutdown", behind)
                    return
                time.sleep(0.2)
        finally:
            reader.close(autocommit=False)


def tune_gc() -> None:
    """Everything allocated at start-up lives as long as the process: keep the collector from walking it,
    and collect young objects less often, which shortens the pauses that show up in p99 latency."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _redact(url: str) -> str:
    """A database URL without its password, for printing."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


async def run(settings: Settings, ready_file: str | None = None) -> int:
    server = Server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("signal %s: shutting down gracefully (send it again to stop at once)", signum)
            stop.set()
        else:
            log.warning("second signal: stopping at once")
            logging.shutdown()
            os._exit(1)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await server.start()
    except Exception:
        log.exception("start-up failed")
        await server.stop()
        return 1
    tune_gc()
    for line in server.describe():
        print(line, flush=True)
    if ready_file:
        with open(ready_file + ".tmp", "w") as f:
            json.dump(server.endpoints(), f)
        os.replace(ready_file + ".tmp", ready_file)
    await stop.wait()
    await server.stop()
    log.info("stopped")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from charging.cli import settings_from

    settings = settings_from(args)
    if args.roles:
        settings = settings.model_copy(update={"roles": _parse_roles(args.roles)})
    setup_logging(settings.logging.level, settings.logging.format)
    return eventloop.run(run(settings, args.ready_file))


def _parse_roles(text: str) -> list[Role]:
    from charging.cli import CommandError

    roles: list[Role] = []
    for part in text.split(","):
        name = part.strip()
        if name not in ("cdf", "ocf", "billing"):
            raise CommandError(f"--roles: unknown role {name!r} (choose from cdf, ocf, billing)")
        roles.append(name)  # type: ignore[arg-type]
    return roles


def add_commands(sub: Any) -> None:
    parser = sub.add_parser("serve", help="run the CDF, OCF and billing (or --roles) in one process")
    parser.add_argument("--roles", help="comma-separated subset of cdf,ocf,billing")
    parser.add_argument("--ready-file", help="write the listening addresses to this file once ready")
    parser.set_defaults(func=_serve)


def main(argv: Iterable[str] | None = None) -> int:
    from charging.cli import main as cli_main

    return cli_main(["serve", *(argv or sys.argv[1:])])
