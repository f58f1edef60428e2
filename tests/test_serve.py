"""``charging serve`` as a process on the embedded defaults (SQLite file, embedded broker).

Real parts only: the process as a user starts it, Diameter over TCP, HTTP, the embedded Kafka-compatible
broker it starts itself, and the example traces replayed by ``charging replay``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.messages import ims_acr
from charging.cdr import Cdr
from charging.diameter import Message
from charging.diameter.node import DiameterNode, NodeConfig, PeerConfig, RequestTimeout
from charging.diameter.peer import LocalIdentity, Timers
from tests.support.diameter import wait_available

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO / "examples" / "traces"


class ServeProcess:
    """``charging serve`` started the way a user starts it, configured by environment variables."""

    def __init__(self, workdir: Path, **settings: str) -> None:
        self.workdir = workdir
        self.db_path = workdir / "charging.db"
        self.ready_file = workdir / "ready.json"
        self.log_path = workdir / "serve.log"
        self.env = {
            **os.environ,
            "CHARGING_DATABASE__URL": f"sqlite:///{self.db_path}",
            "CHARGING_DIAMETER__PORT": "0",
            "CHARGING_DIAMETER__ORIGIN_HOST": "charging.example.net",
            "CHARGING_DIAMETER__ORIGIN_REALM": "example.net",
            "CHARGING_HTTP__PORT": "0",
            "CHARGING_CDF__PUBLISH_POLL_SECONDS": "0.1",
            "CHARGING_BILLING__POLL_TIMEOUT_MS": "100",
            **{f"CHARGING_{k.upper()}": v for k, v in settings.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoints: dict[str, Any] = {}

    def start(self, timeout: float = 60.0) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "charging.cli", "serve", "--ready-file", str(self.ready_file)],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"charging serve did not start:\n{self.log()}")
            time.sleep(0.05)
        self.endpoints = json.loads(self.ready_file.read_text())

    @property
    def diameter_port(self) -> int:
        return int(self.endpoints["diameter"][0][1])

    @property
    def http(self) -> str:
        return str(self.endpoints["http"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"charging serve did not stop on SIGTERM:\n{self.log()}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    # TS 32.297 CDR files beside Kafka, as an operator's billing domain would collect them.
    process = ServeProcess(tmp_path, bx__enabled="true", bx__directory=str(tmp_path / "cdr-files"))
    process.start()
    try:
        yield process
    finally:
        process.kill()


async def get_json(session: aiohttp.ClientSession, url: str, status: int = 200) -> Any:
    async with session.get(url) as response:
        assert response.status == status, f"{url}: {response.status} {await response.text()}"
        return await response.json()


async def poll(fn: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await fn()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def replay(trace: Path, serve: ServeProcess, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "charging.cli", "replay", str(trace), "--target", f"127.0.0.1:{serve.diameter_port}",
         "--http", serve.http, *extra],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def trace_icid(trace: Path) -> str:
    for line in trace.read_text().splitlines():
        record = json.loads(line)
        found = _find(record.get("decoded", {}), "IMS-Charging-Identifier")
        if found:
            return str(found)
    raise AssertionError(f"{trace} has no ICID")


def _find(tree: Any, name: str) -> Any:
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == name:
                return value
            found = _find(value, name)
            if found:
                return found
    if isinstance(tree, list):
        for item in tree:
            found = _find(item, name)
            if found:
                return found
    return None


async def test_serve_answers_diameter_and_http_and_sample_traces_reach_billing_and_the_ocf(
    serve: ServeProcess,
) -> None:
    assert serve.endpoints["embedded_broker"] is True and set(serve.endpoints["roles"]) == {"cdf", "ocf", "billing"}
    async with aiohttp.ClientSession() as http:
        assert (await get_json(http, f"{serve.http}/health"))["status"] == "ok"

        async def ready() -> bool:
            async with http.get(f"{serve.http}/ready") as response:
                return response.status == 200

        await poll(ready, "/ready", timeout=60)
        spec = await get_json(http, f"{serve.http}/openapi.json")
        assert "/ocf/accounts" in spec["paths"] and "/billing/cdrs" in spec["paths"]

        # An IMS call reported over Rf by three nodes: its CDRs travel CDF -> outbox -> Kafka -> billing.
        call = TRACES / "ims-call.jsonl"
        result = replay(call, serve)
        assert result.returncode == 0, result.stdout + result.stderr
        icid = trace_icid(call)

        async def billed() -> list[Any]:
            found = await get_json(http, f"{serve.http}/billing/cdrs?icid={icid}")
            items = found["items"] if isinstance(found, dict) else found
            return items if len(items) >= 3 else []

        stored = await poll(billed, "the call's CDRs in billing")
        assert len(stored) == 3

        # Immediate event charging against the OCF: its account is provisioned from the trace, then debited.
        events = TRACES / "iec-events.jsonl"
        result = replay(events, serve, "--provision")
        assert result.returncode == 0, result.stdout + result.stderr
        account = await get_json(http, f"{serve.http}/ocf/accounts/alice")
        assert account["balance"] == 10, account  # 40 cents, two messages of 15 debited, the third refused

        metrics = await (await http.get(f"{serve.http}/metrics")).text()
        assert 'charging_diameter_requests_total{command="ACA",result_code="2001"}' in metrics
        assert 'charging_diameter_requests_total{command="CCA",result_code="4012"}' in metrics
        # The state gauges are sampled from the database at start and every metrics_sample_seconds.
        for sampled in (
            'cdf_outbox_backlog{sink="kafka"}',
            "cdf_open_records",
            "ocf_open_sessions",
            "billing_consumer_lag",
        ):
            assert sampled in metrics, sampled
    assert serve.terminate() == 0
    assert "Traceback" not in serve.log()
    # Shutdown closed the open CDR file: the call's three records are in it, readable by `charging cdr decode`.
    files = [p for p in (serve.workdir / "cdr-files").iterdir() if p.is_file()]
    assert files, "no TS 32.297 file was written"
    decoded = []
    for path in files:
        result = subprocess.run(
            [sys.executable, "-m", "charging.cli", "cdr", "decode", "--json", str(path)],
            cwd=REPO, capture_output=True, text=True, check=True,
        )  # fmt: skip
        decoded.append(json.loads(result.stdout))
    text = json.dumps(decoded)
    assert text.count(icid) >= 3, "the call's records are not in the CDR files"


async def test_sigterm_under_load_loses_no_acknowledged_acr(serve: ServeProcess) -> None:
    """Every ACR that got an ACA before the shutdown is in exactly one CDR, and billing has every CDR."""
    client = DiameterNode(
        NodeConfig(
            LocalIdentity("scscf.example.net", "example.net"),
            peers=[PeerConfig("charging.example.net", "example.net", "127.0.0.1", serve.diameter_port)],
            client_acct_applications=frozenset({3}),
            timers=Timers(watchdog=5.0, reconnect_min=10.0, reconnect_max=10.0),
            request_timeout=5.0,
        )
    )
    await client.start()
    await wait_available(client, "charging.example.net", timeout=20)
    acknowledged: list[tuple[str, int]] = []
    stopped = asyncio.Event()

    async def call(n: int) -> None:
        session = f"scscf.example.net;load;{n}"
        for number, kind in enumerate(("START", "INTERIM", "STOP")):
            if stopped.is_set():
                return
            acr = ims_acr(
                session_id=session,
                origin_host="scscf.example.net",
                origin_realm="example.net",
                destination_realm="example.net",
                record_type=kind,
                record_number=number,
                icid=f"icid-load-{n}",
            )
            try:
                answer: Message = await client.request(acr)
            except (RequestTimeout, ConnectionError, Exception):
                return
            if answer.get("Result-Code") == 2001:
                acknowledged.append((session, number))
            await asyncio.sleep(0.01)

    async def load() -> None:
        n = 0
        while not stopped.is_set():
            await asyncio.gather(*(call(n + i) for i in range(20)))
            n += 20

    runner = asyncio.create_task(load())
    await asyncio.sleep(2.0)  # under load: then the operator stops it
    assert serve.proc is not None
    serve.proc.send_signal(signal.SIGTERM)
    exit_code = await asyncio.to_thread(serve.proc.wait, 90)
    stopped.set()
    await runner
    await client.stop()
    assert exit_code == 0, serve.log()
    assert len(acknowledged) > 50, "the load did not get going"

    with sqlite3.connect(serve.db_path) as db:
        payloads = [Cdr.from_json(row[0]) for row in db.execute("SELECT payload FROM cdf_outbox")]
        billed_ids = {row[0] for row in db.execute("SELECT cdr_id FROM billing_cdrs")}
        # A session stopped between START and STOP is held in an open record, closed later by its STOP or
        # as incomplete by the sweeper: held, not lost.
        open_records = [(row[0], json.loads(row[1])) for row in db.execute("SELECT session_id, state FROM cdf_record")]
    held: dict[tuple[str, int], int] = {}
    for cdr in payloads:
        for number in cdr.accounting_record_numbers:
            key = (cdr.session_id, number)
            held[key] = held.get(key, 0) + 1
    for session_id, state in open_records:
        for number in state.get("acr_numbers", []):
            key = (session_id, number)
            held[key] = held.get(key, 0) + 1
    missing = [key for key in acknowledged if key not in held]
    assert not missing, f"{len(missing)} acknowledged ACRs are in no CDR nor open record, e.g. {missing[:3]}"
    assert all(count == 1 for count in held.values()), "an ACR is counted in two records"
    closed_ids = {cdr.cdr_id for cdr in payloads}
    assert closed_ids <= billed_ids, f"{len(closed_ids - billed_ids)} closed CDRs never reached billing"
