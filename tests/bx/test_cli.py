"""``charging cdr decode FILE`` prints a written file's header and every CDR decoded."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from cdf.bx import cli
from cdf.bx.writer import BxFileWriter
from charging.cdr import RecordType
from charging.cli import CommandError
from charging.clock import ManualClock
from tests.bx.factories import add_to_outbox, bx_settings, make_cdr
from tests.conftest import Database


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="charging")
    cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


@pytest.fixture
def cdr_file(tmp_path: Path) -> Path:
    database = Database("sqlite", tmp_path)
    try:
        add_to_outbox(database.engine, [make_cdr(1, RecordType.S_CSCF), make_cdr(2, RecordType.MGCF)])
        writer = BxFileWriter(
            database.engine, bx_settings(tmp_path / "out"), owner="cdf-1", clock=ManualClock(1_773_585_005.0)
        )
        writer.run_once()
        closed = writer.shutdown()
    finally:
        database.drop()
    assert closed is not None
    return closed.path


def test_decode_prints_the_header_and_each_cdr(cdr_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["cdr", "decode", str(cdr_file)]) == 0
    out = capsys.readouterr().out
    assert "file sequence number   1" in out
    assert "closure reason         0 (normal)" in out
    assert "number of CDRs         2" in out
    assert "high release/version   Rel-16 version 11" in out
    assert "file opened            --03-15T14:30+00:00" in out
    assert "CDR 1 at octet 54: " in out and "TS 32.260" in out
    assert '"sCSCFRecord": {' in out and '"mGCFRecord": {' in out
    assert '"recordOpeningTime": "2026-03-15T14:30:05+00:00"' in out
    assert '"session-Id": "scscf.example.net;2;1"' in out


def test_decode_json_is_one_document(cdr_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["cdr", "decode", "--json", str(cdr_file)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["header"]["number_of_cdrs"] == 2
    assert document["header"]["file_closure_trigger_reason"] == {"value": 0, "name": "normal"}
    assert document["header"]["node_ip_address"] == "127.0.0.1"
    records = [cdr["record"] for cdr in document["cdrs"]]
    assert records[0]["sCSCFRecord"]["recordType"] == 63
    assert records[1]["mGCFRecord"]["iMS-Charging-Identifier"] == "icid-2-0001@pcscf.example.net"
    assert records[1]["mGCFRecord"]["list-Of-Calling-Party-Address"][1] == {"tEL-URI": "tel:+4930123456"}


def test_a_record_that_does_not_decode_is_shown_and_fails_the_command(
    cdr_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(cdr_file.read_bytes())
    data[54 + 5] = 0x30  # the first record's outer tag: a SEQUENCE, not an IMSRecord alternative
    broken = tmp_path / "broken"
    broken.write_bytes(bytes(data))

    assert run(["cdr", "decode", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "cannot decode" in out and '"mGCFRecord": {' in out


def test_files_that_are_not_cdr_files_are_reported_in_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a CDR file")
    with pytest.raises(CommandError, match="too short"):
        run(["cdr", "decode", str(junk)])
    with pytest.raises(CommandError, match="no such file"):
        run(["cdr", "decode", str(tmp_path / "missing")])
