"""The IMS-GWF between two sipp user agents, charging against the project's own OCF over real sockets.

``ocf`` starts the OCF service (``ocf.service.create_service``) on the ``database`` fixture (SQLite and
PostgreSQL) behind a Diameter node on a free port, with a real clock: sipp runs in real time.
``start_gwf`` starts an IMS-GWF whose Ro client dials that OCF.  ``Sipp`` runs sipp as a child process
with its message trace, from which the tests read what each user agent received and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from charging.clock import SystemClock
from charging.config import Settings
from charging.gwf.server import Gwf, node_for
from charging.gwf.settings import DiameterPeer, GwfSettings
from charging.service import ServiceContext
from ocf import models as m
from ocf import provisioning as p
from ocf.service import OcfService, create_service
from ocf.settings import OcfSettings
from tests.conftest import Database
from tests.support.diameter import server_node, wait_until

SCENARIOS = Path(__file__).parent / "scenarios"
OCF_HOST = "ocf.test"
GWF_HOST = "gwf.test"
REALM = "test"
ALICE = "sip:alice@example.net"
EUR = 978

requires_sipp = pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian sip-tester) is not installed")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (sipp and the GWF may use either)."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, other) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


@dataclass
class Ocf:
    service: OcfService
    database: Database
    clock: SystemClock = field(default_factory=SystemClock)

    @property
    def engine(self) -> Engine:
        return self.database.engine

    @property
    def port(self) -> int:
        return self.service.node.port

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self.engine.begin() as conn:
            return fn(conn, *args, **kwargs)

    def subscriber(self, balance: int, uri: str = ALICE, name: str = "alice") -> int:
        """An account with ``balance`` cents and a subscriber known by its SIP URI; voice at 1 cent a second."""
        now = self.clock.now()
        account = self.run(p.create_account, name, EUR, now, balance)
        self.run(p.add_subscriber, account["id"], name, [(2, uri)], now)
        self.run(
            p.add_tariff, p.TariffSpec(name="voice", unit="time", price=1, rating_group=100, effective_from=0.0), now
        )
        return int(account["id"])

    def balance(self, account_id: int) -> tuple[int, int]:
        with self.engine.begin() as conn:
            row = conn.execute(
                select(m.accounts.c.balance, m.accounts.c.reserved).where(m.accounts.c.id == account_id)
            ).one()
        return int(row.balance), int(row.reserved)

    def ledger(self, account_id: int) -> list[dict[str, Any]]:
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(m.transactions).where(m.transactions.c.account_id == account_id).order_by(m.transactions.c.id)
            ).all()
        return [dict(r._mapping) for r in rows]

    def session(self, session_id: str) -> dict[str, Any]:
        with self.engine.begin() as conn:
            row = conn.execute(select(m.sessions).where(m.sessions.c.session_id == session_id)).one()
        return dict(row._mapping)


def ocf_settings(**overrides: Any) -> OcfSettings:
    values: dict[str, Any] = {
        "grant_seconds": 2,  # small grants, so that a call of a few seconds needs CCR-Us
        "validity_time_seconds": 60,
        "tcc_margin_seconds": 30,
        "sweep_interval_seconds": 3600.0,
        "teardown_poll_seconds": 0.05,
        "teardown_timeout_seconds": 2.0,
        "final_unit_action": "TERMINATE",
    }
    values.update(overrides)
    return OcfSettings(**values)


@contextlib.asynccontextmanager
async def running_ocf(database: Database, **overrides: Any) -> AsyncIterator[Ocf]:
    node = server_node(host=OCF_HOST, realm=REALM)
    ctx = ServiceContext(Settings(ocf=ocf_settings(**overrides)), database.engine, node, None, clock=SystemClock())
    service = create_service(ctx)
    await node.start()
    await service.start()
    try:
        yield Ocf(service, database)
    finally:
        await service.stop()
        await node.stop()


@pytest.fixture
async def ocf(database: Database) -> AsyncIterator[Ocf]:
    """The OCF on SQLite and on PostgreSQL: for the tests whose outcome is what the account is charged."""
    async with running_ocf(database) as running:
        yield running


@pytest.fixture
async def ocf_sqlite(tmp_path: Path) -> AsyncIterator[Ocf]:
    """The OCF on SQLite only: for tests of SIP behaviour, which the choice of database does not touch."""
    database = Database("sqlite", tmp_path)
    try:
        async with running_ocf(database) as running:
            yield running
    finally:
        database.drop()


def gwf_settings(ocf_port: int, callee_port: int, transport: str = "udp", **overrides: Any) -> GwfSettings:
    values: dict[str, Any] = {
        "sip_address": "127.0.0.1",
        "udp_port": 0,
        "tcp_port": 0,
        "next_hop": f"sip:127.0.0.1:{callee_port};transport={transport}",
        "origin_host": GWF_HOST,
        "origin_realm": REALM,
        "ocf": DiameterPeer(host=OCF_HOST, realm=REALM, address="127.0.0.1", port=ocf_port),
        "tx_seconds": 2.0,
        "failover_seconds": 2.0,
        "quota_margin_seconds": 0.5,
        "requested_seconds": 60,
    }
    values.update(overrides)
    return GwfSettings(**values)


GwfFactory = Callable[..., Awaitable[Gwf]]


@pytest.fixture
async def start_gwf() -> AsyncIterator[GwfFactory]:
    started: list[Gwf] = []

    async def start(settings: GwfSettings, wait_for_ocf: bool = True) -> Gwf:
        gwf = Gwf(settings, node_for(settings))
        await gwf.start()
        started.append(gwf)
        if wait_for_ocf:
            await wait_until(gwf.ocf_available, 5.0, "the GWF's connection to the OCF")
        return gwf

    yield start
    for gwf in started:
        await gwf.stop()


# -- sipp -------------------------------------------------------------------------------------------

_STAMP = re.compile(r"^-{10,} (\d{4}-\d{2}-\d{2})\s+(\d{2}:\d{2}:\d{2}(?:\.\d+)?)")
_WHAT = re.compile(r"^(\w+) message (received|sent)")


@dataclass(frozen=True)
class Traced:
    at: float
    direction: str  # received | sent
    first_line: str


class Sipp:
    """One sipp process, run to completion, with its message trace."""

    def __init__(self, name: str, workdir: Path, scenario: str, port: int, *args: str, transport: str = "u1") -> None:
        self.name = name
        self.workdir = workdir
        self.messages = workdir / f"{name}_messages.log"
        self.errors = workdir / f"{name}_errors.log"
        self.argv = [
            "sipp",
            *args,
            "-sf",
            str(SCENARIOS / scenario),
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-t",
            transport,
            "-m",
            "1",
            "-nostdin",
            "-trace_msg",
            "-message_file",
            str(self.messages),
            "-trace_err",
            "-error_file",
            str(self.errors),
        ]
        self.proc: asyncio.subprocess.Process | None = None
        self.output = b""

    async def start(self) -> Sipp:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=self.workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return self

    async def wait(self, timeout: float = 40.0) -> int:
        assert self.proc is not None
        try:
            self.output, _ = await asyncio.wait_for(self.proc.communicate(), timeout)
        except TimeoutError:
            self.kill()
            raise AssertionError(f"sipp {self.name} did not finish within {timeout} s") from None
        assert self.proc.returncode is not None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def trace(self) -> list[Traced]:
        """The messages in sipp's trace, each with the time sipp logged it."""
        if not self.messages.exists():
            return []
        out: list[Traced] = []
        at: float | None = None
        direction = ""
        expect_first = False
        for line in self.messages.read_text(errors="replace").splitlines():
            stamp = _STAMP.match(line)
            if stamp:
                at = datetime.fromisoformat(f"{stamp.group(1)} {stamp.group(2)}").timestamp()
                continue
            what = _WHAT.match(line)
            if what and at is not None:
                direction = what.group(2)
                expect_first = True
                continue
            if expect_first and line.strip() and at is not None:
                out.append(Traced(at, direction, line.strip()))
                expect_first = False
        return out

    def received(self, prefix: str) -> list[Traced]:
        return [t for t in self.trace() if t.direction == "received" and t.first_line.startswith(prefix)]

    def sent(self, prefix: str) -> list[Traced]:
        return [t for t in self.trace() if t.direction == "sent" and t.first_line.startswith(prefix)]

    def report(self) -> str:
        errors = self.errors.read_text(errors="replace") if self.errors.exists() else ""
        return (
            f"sipp {self.name}: {' '.join(self.argv)}\n{self.output.decode(errors='replace')[-2000:]}\n{errors[-2000:]}"
        )
