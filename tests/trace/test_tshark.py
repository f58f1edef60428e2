"""A capture taken by tshark during a real run imports and replays (interop: tshark, real TCP on loopback)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from charging.cli import main
from charging.trace.format import read_trace
from charging.trace.targets import InProcessTarget
from tests.trace.support import (
    CLIENT,
    SETUP,
    TSHARK,
    acr,
    client,
    scur_call,
    send_all,
    start_capture,
    stop_capture,
    tshark_diameter,
)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (scripts/bootstrap.sh installs it)"),
]


@pytest.mark.parametrize("fmt", ["pcapng", "pcap"])
async def test_a_tshark_capture_of_a_real_run_imports_and_replays(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = tmp_path / f"run.{fmt}"
    live = InProcessTarget(start=time.time())
    await live.start(SETUP)
    try:
        port = live.address[1]
        proc = await asyncio.to_thread(start_capture, capture, port, fmt)
        try:
            async with client(port, acct=True) as node:
                call = [*scur_call(f"{CLIENT};3;1"), acr("pcscf.trace.test;3;1", "START_RECORD", 0)]
                answers = await send_all(node, call)
        finally:
            await asyncio.to_thread(stop_capture, proc, capture, port)
    finally:
        await live.stop()
    assert [a["Result-Code"] for a in answers] == [2001] * 4

    setup = tmp_path / "setup.json"
    setup.write_text(json.dumps(SETUP))
    trace_path = tmp_path / "imported.jsonl"
    args = ["trace", "import", str(capture), "-o", str(trace_path), "--port", str(port), "--setup", str(setup)]
    assert await asyncio.to_thread(main, args) == 0
    trace = read_trace(trace_path)
    assert trace.header.source["format"] == fmt
    commands = [(r.sender, r.message.command_name) for r in trace.messages]
    assert commands[:2] == [("client", "CER"), ("server", "CEA")]
    assert commands[2:10] == [("client", "CCR"), ("server", "CCA")] * 3 + [("client", "ACR"), ("server", "ACA")]
    assert len(tshark_diameter(capture, port)) == len(trace.messages)

    assert await asyncio.to_thread(main, ["replay", str(trace_path), "-v"]) == 0
    assert "imported.jsonl: 4 cases, 0 failed: passed" in capsys.readouterr().out
