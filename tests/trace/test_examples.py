"""The example traces that the project's CI replays: in-process, and against a running CDF/OCF on both databases."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from kafka import KafkaConsumer, TopicPartition

from charging.broker import consumer_config
from charging.cli import main
from charging.clock import SystemClock
from charging.config import Settings
from charging.diameter.node import DiameterNode
from charging.serve import node_config
from charging.service import Service, ServiceContext
from charging.trace.format import read_trace
from charging.trace.replay import Replayer
from charging.trace.targets import in_process_target
from charging.web import ApiAuth, OpenApi, make_app
from tests.conftest import Database

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "traces"
TRACES = sorted(str(p) for p in EXAMPLES.glob("*.jsonl"))


async def run_cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


def test_the_examples_cover_an_ims_call_over_rf_a_prepaid_call_out_of_credit_and_iec_events() -> None:
    assert [Path(t).name for t in TRACES] == ["iec-events.jsonl", "ims-call.jsonl", "prepaid-scur-out-of-credit.jsonl"]


async def test_the_example_traces_replay_as_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "junit.xml"
    assert await run_cli("replay", *TRACES, "--junit", str(report)) == 0
    root = ET.fromstring(report.read_bytes())
    assert root.get("failures") == "0"
    assert [s.get("name") for s in root.iter("testsuite")] == [Path(t).name for t in TRACES]
    assert int(root.get("tests") or 0) == 20
    assert capsys.readouterr().out.count(": passed") == 3


async def test_an_asr_the_trace_does_not_expect_fails_the_replay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = (EXAMPLES / "prepaid-scur-out-of-credit.jsonl").read_text().splitlines()
    kept = [line for line in lines if '"command":"ASR"' not in line and '"command":"ASA"' not in line]
    assert len(kept) == len(lines) - 2
    trace = tmp_path / "no-asr.jsonl"
    trace.write_text("\n".join(kept) + "\n")
    assert await run_cli("replay", str(trace)) == 1
    out = capsys.readouterr().out
    assert "FAIL  unexpected ASR from the server (mmtel.ims.example.net;1767258000;101)" in out


@contextlib.asynccontextmanager
async def running_charging(engine_url: Database) -> AsyncIterator[tuple[int, int]]:
    """The CDF and the OCF as ``charging serve`` runs them, on the test's database, with their HTTP API."""
    database = engine_url
    settings = Settings.model_validate(
        {
            "roles": ["cdf", "ocf"],
            "diameter": {"origin_host": "charging.example.net", "origin_realm": "example.net", "port": 0},
            "cdf": {"publish": False},
        }
    )
    node = DiameterNode(node_config(settings))
    ctx = ServiceContext(settings, database.engine, node, None, clock=SystemClock())
    services: list[Service] = []
    for role in ("cdf", "ocf"):
        module = __import__(f"{role}.service", fromlist=["create_service"])
        services.append(module.create_service(ctx))
    await node.start()
    for service in services:
        await service.start()
    app = make_app(ApiAuth({"admin-token": "admin"}))
    spec = OpenApi(title="test")
    for service in services:
        service.add_routes(app, spec)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield node.port, int(runner.addresses[0][1])
    finally:
        await node.stop()
        for service in reversed(services):
            await service.stop()
        await runner.cleanup()


async def test_examples_replay_against_a_running_cdf_and_ocf_over_tcp_and_http(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    chosen = [str(EXAMPLES / "ims-call.jsonl"), str(EXAMPLES / "prepaid-scur-out-of-credit.jsonl")]
    async with running_charging(database) as (diameter_port, http_port):
        status = await run_cli(
            "replay",
            *chosen,
            "--target",
            f"127.0.0.1:{diameter_port}",
            "--http",
            f"http://127.0.0.1:{http_port}",
            "--token",
            "admin-token",
            "--provision",
        )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "ims-call.jsonl: 7 cases, 0 failed: passed" in out


async def test_a_chosen_speed_paces_the_replay_without_changing_its_result(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await run_cli("replay", str(EXAMPLES / "iec-events.jsonl"), "--speed", "100") == 0
    assert "iec-events.jsonl: 4 cases, 0 failed: passed" in capsys.readouterr().out


def consume(bootstrap: str, topic: str, expected: int, timeout: float = 15.0) -> list[Any]:
    """Every record of ``topic`` from the beginning, once ``expected`` of them are there (or the time is up)."""
    consumer = KafkaConsumer(**consumer_config(bootstrap, None))
    try:
        deadline = time.monotonic() + timeout
        partitions = None
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
        assert partitions, f"no metadata for {topic}"
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        records: list[Any] = []
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


@pytest.mark.kafka
async def test_an_in_process_replay_can_publish_its_cdrs_to_an_embedded_broker() -> None:
    trace = read_trace(EXAMPLES / "ims-call.jsonl")
    target = in_process_target(trace, trace.header.setup, broker=True)
    await target.start(trace.header.setup)
    try:
        result = await Replayer(trace, target).run()
        assert result.passed, [c.failure_text() for c in result.failures]
        assert target.settings is not None and target.bootstrap is not None
        records = await asyncio.to_thread(consume, target.bootstrap, target.settings.kafka.cdr_topic, 3)
        replayed = await target.cdrs()
    finally:
        await target.stop()
    assert replayed is not None and len(replayed) == 3
    published = sorted(json.loads(r.value)["cdr_id"] for r in records)
    assert published == sorted(c["cdr_id"] for c in replayed)
