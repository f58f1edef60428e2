"""``charging gwf``: settings from the [gwf] section and flags, and the command serving SIP as a process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from charging.config import ConfigError
from charging.gwf.cli import load_gwf_settings
from tests.gwf.conftest import free_port


def test_settings_come_from_the_gwf_section_and_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "charging.toml"
    config.write_text(
        "[gwf]\nudp_port = 5070\nfailure_handling = 'CONTINUE'\n[gwf.ocf]\nhost = 'ocs.example.net'\nport = 3869\n"
        "[database]\nurl = 'sqlite:///x.db'\n"
    )
    settings = load_gwf_settings(str(config), {"udp_port": 5080, "ocf": {"address": "10.0.0.9"}})
    assert settings.udp_port == 5080 and settings.failure_handling == "CONTINUE"
    assert (settings.ocf.host, settings.ocf.address, settings.ocf.port) == ("ocs.example.net", "10.0.0.9", 3869)


def test_a_bad_setting_is_reported_by_its_key(tmp_path: Path) -> None:
    config = tmp_path / "charging.toml"
    config.write_text("[gwf]\nfailure_handling = 'SOMETIMES'\ncolour = 'blue'\n")
    with pytest.raises(ConfigError) as err:
        load_gwf_settings(str(config), {})
    assert "gwf.failure_handling" in str(err.value) and "gwf.colour" in str(err.value)


async def test_the_command_serves_sip_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "charging.cli", "gwf", "--udp-port", str(port), "--tcp-port", str(port),
        "--ocf", f"127.0.0.1:{free_port(socket.SOCK_STREAM)}",
        stdout=asyncio.subprocess.PIPE, stderr=(tmp_path / "gwf.log").open("wb"), cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20.0)
        assert line.startswith(b"charging gwf: SIP on 127.0.0.1"), line
        options = (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-cli;rport\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:probe@example.net>;tag=p\r\nTo: <sip:gwf@example.net>\r\n"
            "Call-ID: cli-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(5.0)
            sock.sendto(options, ("127.0.0.1", port))
            reply, _ = await asyncio.to_thread(sock.recvfrom, 65535)
        assert reply.startswith(b"SIP/2.0 200 ") and b"\r\nAllow: " in reply
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20.0) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
