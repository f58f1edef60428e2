"""Replay targets: a running CDF/OCF named by address, or one started in this process for the run.

Both read effects the same way, over the HTTP APIs of the roles: CDRs from the
CDF's ``GET /cdf/cdrs`` (the outbox, written in the same transaction as the ACR,
so a CDR is there by the time its ACA is), balances from the OCF's
``GET /ocf/accounts/{name}``; provisioning goes through ``POST /ocf/...``.

The in-process target runs the ``cdf`` and ``ocf`` services of ``charging serve``
on a temporary SQLite database, with a ``ManualClock`` that only the replay moves.
Their sweep loops never come round by themselves; instead, each time the replay
moves the clock, the target runs the CDF's and the OCF's sweeps at the new time and
wakes the OCF's ASR/RAR loop, so timers (validity, Tcc, incomplete CDRs) fire at
the same virtual time in every run.  CDRs also go to JSON-lines files in the run's
directory, and to an embedded Kafka-compatible broker when asked.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from charging.clock import ManualClock
from charging.config import Settings
from charging.db import make_engine, migrate
from charging.diameter.node import DiameterNode
from charging.metrics import Registry
from charging.service import Service, ServiceContext
from charging.trace.format import Trace
from charging.trace.plan import build_plan
from charging.trace.rewrite import Rewriter
from charging.web import ApiAuth, OpenApi, make_app

log = logging.getLogger("charging.trace.targets")

_IDLE = 1e9  # seconds: background loops of the in-process services never come round by themselves


class TargetError(Exception):
    """The target cannot be used (unreachable API, provisioning refused)."""


class HttpState:
    """CDRs, balances and provisioning through the roles' HTTP APIs."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=30))

    async def close(self) -> None:
        await self._session.close()

    async def _get(self, path: str, params: dict[str, Any] | None = None) -> tuple[int, Any]:
        try:
            async with self._session.get(self.base_url + path, params=params) as resp:
                body = await resp.json(content_type=None) if resp.status != 204 else None
                return resp.status, body
        except aiohttp.ClientError as exc:
            raise TargetError(f"GET {self.base_url}{path}: {exc}") from None

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            async with self._session.post(self.base_url + path, json=body) as resp:
                payload = await resp.json(content_type=None)
                if resp.status >= 300:
                    raise TargetError(f"POST {path} {body}: HTTP {resp.status}: {payload}")
                return payload
        except aiohttp.ClientError as exc:
            raise TargetError(f"POST {self.base_url}{path}: {exc}") from None

    async def cdrs(self, session_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """CDRs in the order stored: all of them, or those of the given sessions."""
        out: list[dict[str, Any]] = []
        for session_id in session_ids if session_ids is not None else [None]:
            after = 0
            while True:
                params: dict[str, Any] = {"after": after, "limit": 1000}
                if session_id is not None:
                    params["session_id"] = session_id
                status, page = await self._get("/cdf/cdrs", params)
                if status != 200:
                    raise TargetError(f"GET /cdf/cdrs: HTTP {status}: {page}")
                out += page["cdrs"]
                if page.get("next_after") is None:
                    break
                after = int(page["next_after"])
        return out

    async def balances(self, accounts: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name in accounts:
            status, body = await self._get(f"/ocf/accounts/{quote(name, safe='')}")
            if status == 404:
                continue
            if status != 200:
                raise TargetError(f"GET /ocf/accounts/{name}: HTTP {status}: {body}")
            out[name] = body
        return out

    async def provision(self, ocf: dict[str, Any]) -> None:
        """Create what a trace's ``setup.ocf`` lists: tariffs, accounts, buckets, subscribers, top-ups."""
        for tariff in ocf.get("tariffs", []):
            await self._post("/ocf/tariffs", tariff)
        for account in ocf.get("accounts", []):
            await self._post("/ocf/accounts", account)
        for bucket in ocf.get("buckets", []):
            body = dict(bucket)
            ref = body.pop("account")
            await self._post(f"/ocf/accounts/{quote(str(ref), safe='')}/buckets", body)
        for subscriber in ocf.get("subscribers", []):
            await self._post("/ocf/subscribers", subscriber)
        for topup in ocf.get("topups", []):
            body = dict(topup)
            ref = body.pop("account")
            await self._post(f"/ocf/accounts/{quote(str(ref), safe='')}/topup", body)


class RemoteTarget:
    """A CDF/OCF already running: Diameter at ``address``, effects through its HTTP API if given."""

    def __init__(self, address: tuple[str, int], http: HttpState | None = None) -> None:
        self.address = address
        self.http = http
        self.session_ids: list[str] | None = None  # the replay's sessions: only their CDRs are read

    async def start(self, setup: dict[str, Any], provision: bool = False) -> None:
        if provision:
            if self.http is None:
                raise TargetError("provisioning needs the target's HTTP API (--http)")
            await self.http.provision(setup.get("ocf", {}))

    async def advance(self, unix_time: float) -> None:
        return None  # a running target keeps its own time

    async def cdrs(self) -> list[dict[str, Any]] | None:
        if self.http is None:
            return None
        return await self.http.cdrs(self.session_ids)

    async def balances(self, accounts: list[str]) -> dict[str, dict[str, Any]] | None:
        if self.http is None:
            return None
        return await self.http.balances(accounts)

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()


class InProcessTarget:
    """The CDF and the OCF of this installation, started for one replay on a virtual clock."""

    def __init__(
        self,
        start: float,
        server_host: str = "",
        server_realm: str = "",
        settings: dict[str, Any] | None = None,
        workdir: str | Path | None = None,
        broker: bool = False,
        roles: tuple[str, ...] = ("cdf", "ocf"),
    ) -> None:
        self.clock = ManualClock(start)
        self._server_host = server_host or "charging.localdomain"
        self._server_realm = server_realm or "localdomain"
        self._overrides = settings or {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.workdir = Path(workdir) if workdir is not None else None
        self._want_broker = broker
        self.roles = roles
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self.http: HttpState | None = None
        self.node: DiameterNode | None = None
        self.services: list[Service] = []
        self.settings: Settings | None = None
        self._runner: web.AppRunner | None = None
        self._engine: Any = None
        self._broker: Any = None
        self.bootstrap: str | None = None  # the embedded broker's address, when there is one

    @property
    def cdr_directory(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "cdr-files"

    def _settings(self, kafka_bootstrap: str | None) -> Settings:
        assert self.workdir is not None
        base = Settings().model_dump()
        merged = _deep_merge(base, self._overrides)
        forced = {
            "roles": list(self.roles),
            "database": {"url": f"sqlite:///{self.workdir / 'replay.db'}", "migrate_on_start": True},
            "diameter": {
                "origin_host": self._server_host,
                "origin_realm": self._server_realm,
                "listen_address": "127.0.0.1",
                "port": 0,
                "tls_port": None,
                "peers": [],
                "allowed_networks": ["127.0.0.0/8", "::1/128"],
            },
            "http": {"listen_address": "127.0.0.1", "port": 0, "read_tokens": [], "admin_tokens": []},
            "kafka": {"bootstrap": kafka_bootstrap},
            "cdf": {
                "sweep_interval_seconds": _IDLE,
                "files_enabled": True,
                "files_directory": str(self.cdr_directory),
                "publish": kafka_bootstrap is not None,
            },
            # The teardown loop also looks by itself, in case a wake-up comes while it is busy.
            "ocf": {"sweep_interval_seconds": _IDLE, "teardown_poll_seconds": 0.2},
        }
        return Settings.model_validate(_deep_merge(merged, forced))

    async def start(self, setup: dict[str, Any]) -> None:
        from charging.serve import node_config

        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="charging-replay-")
            self.workdir = Path(self._tmp.name)
        bootstrap = None
        if self._want_broker:
            from charging.broker import EmbeddedBroker, create_topic

            self._broker = await asyncio.to_thread(lambda: EmbeddedBroker().start())
            bootstrap = self._broker.bootstrap
        self.bootstrap = bootstrap
        settings = self._settings(bootstrap)
        self.settings = settings
        if bootstrap is not None:
            topic, partitions = settings.kafka.cdr_topic, settings.kafka.partitions
            await asyncio.to_thread(lambda: create_topic(bootstrap, topic, partitions=partitions, exist_ok=True))
        self._engine = make_engine(settings.database.url, pool_size=settings.database.pool_size)
        await asyncio.to_thread(migrate, self._engine)
        self.node = DiameterNode(node_config(settings))
        ctx = ServiceContext(
            settings=settings,
            engine=self._engine,
            node=self.node,
            kafka_bootstrap=bootstrap,
            clock=self.clock,
            metrics=Registry(),
            node_id=settings.node_id,
        )
        for role in self.roles:
            module = importlib.import_module(f"{role}.service")
            self.services.append(module.create_service(ctx))
        await self.node.start()
        self.address = self.node.bound[0]
        for service in self.services:
            await service.start()
        app = make_app(ApiAuth({}))
        spec = OpenApi(title="charging replay target")
        for service in self.services:
            service.add_routes(app, spec)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = int(self._runner.addresses[0][1])
        self.http = HttpState(f"http://127.0.0.1:{port}")
        await self.http.provision(setup.get("ocf", {}))

    async def advance(self, unix_time: float) -> None:
        """Move the clock forward to ``unix_time`` and run what fell due; nothing falls due if it stays put."""
        if unix_time > self.clock.now():
            self.clock.set(unix_time)
            await self.run_due()

    async def run_due(self) -> None:
        """Run, at the clock's time, what the services' timers would run.

        The CDF's and the OCF's sweeps run here, at the clock's time.  ASR/RAR that a
        sweep leaves pending are sent by the OCF's own teardown loop, woken here: a
        second sender running beside it could send the same ASR twice.
        """
        for service in self.services:
            sweep_now = getattr(service, "sweep_now", None)
            if sweep_now is not None:
                await sweep_now()
                continue
            sweeper = getattr(service, "sweeper", None)
            if sweeper is not None:
                await sweeper.sweep()
            teardown = getattr(service, "teardown", None)
            if teardown is not None:
                teardown.wake()

    async def cdrs(self) -> list[dict[str, Any]] | None:
        if self.http is None or "cdf" not in self.roles:
            return None
        return await self.http.cdrs()

    async def balances(self, accounts: list[str]) -> dict[str, dict[str, Any]] | None:
        if self.http is None or "ocf" not in self.roles:
            return None
        return await self.http.balances(accounts)

    async def stop(self) -> None:
        if self.node is not None:
            await self.node.stop(timeout=2.0)
        for service in reversed(self.services):
            try:
                await service.stop()
            except Exception:
                log.exception("stopping %s failed", getattr(service, "name", service))
        if self.http is not None:
            await self.http.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._engine is not None:
            self._engine.dispose()
        if self._broker is not None:
            await asyncio.to_thread(self._broker.stop)
        if self._tmp is not None:
            self._tmp.cleanup()


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def merge_setup(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A trace's setup with another laid over it: objects merge, anything else (lists too) is replaced."""
    return _deep_merge(base, over)


def in_process_target(
    trace: Trace,
    setup: dict[str, Any],
    rewriter: Rewriter | None = None,
    broker: bool = False,
    workdir: Path | None = None,
) -> InProcessTarget:
    """The in-process target for a trace: its clock at the trace's start, its identity the trace's server.

    The server's Origin-Host and realm come from ``setup.server`` if given, else from the
    first message the server sent in the trace, else the configuration's defaults.
    """
    rw = rewriter or Rewriter()
    plan = build_plan(trace)
    server = setup.get("server", {})
    return InProcessTarget(
        start=trace.header.start,
        server_host=rw.host(str(server.get("host") or plan.server_host)),
        server_realm=rw.realm(str(server.get("realm") or plan.server_realm)),
        settings=setup.get("settings", {}),
        workdir=workdir,
        broker=broker,
    )
