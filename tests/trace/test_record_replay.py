"""Record through the proxy, then replay: real TCP, the in-process CDF/OCF on SQLite, the ``charging`` CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from charging.cli import main
from charging.clock import SystemClock
from charging.diameter import Message
from charging.trace.format import CheckRecord, Expectation, Header, MessageRecord, Trace, read_trace, write_trace
from charging.trace.proxy import RecordingProxy
from charging.trace.recorder import TraceRecorder
from charging.trace.replay import Replayer, ReplayOptions
from charging.trace.rewrite import Rewriter
from charging.trace.targets import InProcessTarget, in_process_target
from tests.support.diameter import RawClient
from tests.trace.support import CLIENT, NEW_TARIFF, SETUP, acr, client, scur_call, send_all


@pytest.fixture
async def live() -> AsyncIterator[InProcessTarget]:
    """A CDF and OCF to record against (provisioned with the trace setup)."""
    target = InProcessTarget(start=time.time())
    await target.start(SETUP)
    try:
        yield target
    finally:
        await target.stop()


async def record_call(target: InProcessTarget, path: Path) -> None:
    """A prepaid call and its Rf accounting, through the recording proxy."""
    with open(path, "w", encoding="utf-8") as stream:
        recorder = TraceRecorder(stream, SystemClock(), {"kind": "record"}, SETUP)
        proxy = RecordingProxy(("127.0.0.1", 0), target.address, recorder)
        await proxy.start()
        async with client(proxy.port, acct=True) as node:
            call = [*scur_call(f"{CLIENT};1;1"), acr("pcscf.trace.test;1;1", "START_RECORD", 0)]
            answers = await send_all(node, call)
            assert [a["Result-Code"] for a in answers] == [2001] * 4
            assert node.peers["target"].info.origin_host == "charging.localdomain"  # the CEA came through unchanged
        await proxy.wait_idle()
        await proxy.stop()


def junit(path: Path) -> ET.Element:
    return ET.fromstring(path.read_bytes())


async def run_cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


async def test_a_recorded_call_replays_and_passes(
    live: InProcessTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace_path = tmp_path / "call.jsonl"
    await record_call(live, trace_path)
    trace = read_trace(trace_path)
    sent = [(r.sender, r.message.command_name) for r in trace.messages]
    assert sent[:2] == [("client", "CER"), ("server", "CEA")]
    assert sent[2:10] == [("client", "CCR"), ("server", "CCA")] * 3 + [("client", "ACR"), ("server", "ACA")]
    assert trace.messages[0].peer.host == CLIENT and trace.messages[1].peer.host == "charging.localdomain"
    assert trace.header.setup == SETUP

    report = tmp_path / "junit.xml"
    assert await run_cli("replay", str(trace_path), "--junit", str(report), "-v") == 0
    out = capsys.readouterr().out
    assert "call.jsonl: 4 cases, 0 failed: passed" in out
    suite = junit(report).find("testsuite")
    assert suite is not None and suite.get("tests") == "4" and suite.get("failures") == "0"


async def test_a_tariff_change_fails_the_replay_with_a_diff_naming_the_field_the_same_way_every_run(
    live: InProcessTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace_path = tmp_path / "call.jsonl"
    await record_call(live, trace_path)
    tariff = tmp_path / "tariff.json"
    tariff.write_text(json.dumps(NEW_TARIFF))
    reports = [tmp_path / "first.xml", tmp_path / "second.xml"]
    for report in reports:
        args = ("replay", str(trace_path), "--setup", str(tariff), "--junit", str(report))
        assert await run_cli(*args) == 1
    out = capsys.readouterr().out
    assert "FAIL  line 6: CCR UPDATE_REQUEST #1" in out
    assert "answer Cost-Information/Unit-Value/Value-Digits: expected 120, got 180" in out
    assert reports[0].read_bytes() == reports[1].read_bytes()
    failures = [f.text or "" for f in junit(reports[0]).iter("failure")]
    assert len(failures) == 2
    assert "Cost-Information/Unit-Value/Value-Digits: expected 120, got 180" in failures[0]


async def test_rewritten_identities_reach_the_target_and_the_expectations_follow_them(
    live: InProcessTarget, tmp_path: Path
) -> None:
    trace_path = tmp_path / "call.jsonl"
    await record_call(live, trace_path)
    trace = read_trace(trace_path)
    rewriter = Rewriter({CLIENT: "as.ci.test"}, {"trace.test": "ci.test"}, "ci-run")
    target = in_process_target(trace, trace.header.setup, rewriter)
    await target.start(trace.header.setup)
    try:
        result = await Replayer(trace, target, ReplayOptions(rewriter=rewriter)).run()
    finally:
        await target.stop()
    assert result.passed, [c.failure_text() for c in result.failures]
    answer = result.cases[0].actual_answer
    assert answer is not None and answer["Session-Id"] == "as.ci.test;1;1;ci-run"


async def test_the_virtual_clock_fires_the_cdfs_timers_at_the_traces_times(tmp_path: Path) -> None:
    start = 1_767_258_000.0
    opening = acr("pcscf.trace.test;9;9", "START_RECORD", 0)
    opening.add("Acct-Interim-Interval", 60)
    opening.hop_by_hop, opening.end_to_end = 1, 2
    incomplete = {
        "record_type": "pCSCFRecord",
        "session_id": "pcscf.trace.test;9;9",
        "incomplete_cdr_indication": {"acr_start_lost": False, "acr_interim_lost": "unknown", "acr_stop_lost": True},
    }
    trace = Trace(
        Header(start, "2026-01-01T00:00:00Z", {"kind": "test"}, {}),
        [
            MessageRecord(0.0, 1, "client", opening.to_bytes()),
            CheckRecord(179.0, Expectation(cdrs=[]), "still open after 179 s"),
            CheckRecord(181.0, Expectation(cdrs=[incomplete]), "closed as incomplete after three intervals"),
        ],
    )
    path = tmp_path / "silent.jsonl"
    write_trace(path, trace)
    assert await run_cli("replay", str(path)) == 0
    trace.records[1] = CheckRecord(181.0, Expectation(cdrs=[]), "wrongly expected still open")
    trace.records.pop()
    write_trace(path, trace)
    assert await run_cli("replay", str(path)) == 1


async def test_trace_record_command_relays_and_records_until_interrupted(live: InProcessTarget, tmp_path: Path) -> None:
    out = tmp_path / "recorded.jsonl"
    host, port = live.address
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "charging.cli",
            "trace",
            "record",
            "--listen",
            "127.0.0.1:0",
            "--server",
            f"{host}:{port}",
            "-o",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert proc.stdout is not None
        banner = await asyncio.to_thread(proc.stdout.readline)
        assert banner.startswith("recording Diameter between clients of 127.0.0.1:"), banner
        proxy_port = int(banner.split("127.0.0.1:")[1].split()[0])
        async with client(proxy_port) as node:
            answers = await send_all(node, scur_call(f"{CLIENT};2;1"))
        assert [a["Result-Code"] for a in answers] == [2001, 2001, 2001]
        proc.send_signal(signal.SIGINT)
        rest = await asyncio.to_thread(proc.communicate, timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "messages recorded in" in rest[0]
    commands = [r.message.command_name for r in read_trace(out).messages]
    assert commands[:8] == ["CER", "CEA", "CCR", "CCA", "CCR", "CCA", "CCR", "CCA"]


async def test_a_nodes_own_traffic_recorded_by_its_observer_replays_as_it_is(
    live: InProcessTarget, tmp_path: Path
) -> None:
    path = tmp_path / "observed.jsonl"
    assert live.node is not None
    with open(path, "w", encoding="utf-8") as stream:
        recorder = TraceRecorder(stream, live.clock, {"kind": "node"}, SETUP)
        live.node.observers.append(recorder.node_observer(live.node.identity.origin_host))
        async with client(live.address[1]) as node:
            await send_all(node, scur_call(f"{CLIENT};4;1"))
        live.node.observers.clear()
    trace = read_trace(path)
    sent = [(r.sender, r.message.command_name) for r in trace.messages]
    assert sent[:8] == [("client", "CER"), ("server", "CEA")] + [("client", "CCR"), ("server", "CCA")] * 3
    assert trace.messages[0].peer.host == CLIENT
    target = in_process_target(trace, trace.header.setup)
    await target.start(trace.header.setup)
    try:
        result = await Replayer(trace, target).run()
    finally:
        await target.stop()
    assert result.passed and len(result.cases) == 3, [c.failure_text() for c in result.failures]


async def test_the_proxy_relays_octets_unchanged_and_records_each_message_as_it_passed(
    live: InProcessTarget, tmp_path: Path
) -> None:
    path = tmp_path / "raw.jsonl"
    with open(path, "w", encoding="utf-8") as stream:
        recorder = TraceRecorder(stream, SystemClock(), {"kind": "record"})
        proxy = RecordingProxy(("127.0.0.1", 0), live.address, recorder)
        await proxy.start()
        raw = RawClient()
        await raw.connect(proxy.port)
        cea = await raw.handshake(origin_host=CLIENT, realm="trace.test")
        first, second = (raw.next_ids(m).to_bytes() for m in scur_call(f"{CLIENT};5;1")[:2])
        await raw.send(first[:33])  # a message in two writes
        await asyncio.sleep(0.05)
        await raw.send(first[33:])
        cca1 = await raw.recv()
        dwr = raw.next_ids(Message.request("DWR", 0, {"Origin-Host": CLIENT, "Origin-Realm": "trace.test"}))
        await raw.send(second + dwr.to_bytes())  # two messages in one write
        replies = {m.command_name: m for m in [await raw.recv(), await raw.recv()]}
        await raw.close()
        await proxy.wait_idle()
        await proxy.stop()
    records = read_trace(path).messages
    sent = [(r.sender, r.message.command_name) for r in records]
    assert sent[:6] == [
        ("client", "CER"),
        ("server", "CEA"),
        ("client", "CCR"),
        ("server", "CCA"),
        ("client", "CCR"),
        ("client", "DWR"),
    ]
    assert sorted(sent[6:]) == [("server", "CCA"), ("server", "DWA")]  # the server answers in its own order
    assert records[1].raw == cea.to_bytes() and cea["Origin-Host"] == "charging.localdomain"
    assert records[2].raw == first and records[3].raw == cca1.to_bytes()
    assert records[4].raw == second and records[5].raw == dwr.to_bytes()
    assert {r.raw for r in records[6:]} == {replies["CCA"].to_bytes(), replies["DWA"].to_bytes()}
