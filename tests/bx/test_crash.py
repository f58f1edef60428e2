"""A file writer killed (SIGKILL) at each step of closing a file loses no CDR and writes none twice.

The child process (crashing_writer.py) writes 7 CDRs into files of 3 and dies when the closing of its
first file reaches the step; a new writer with the same owner then recovers and finishes.  Afterwards the
completed files, including any a billing system collected in between, hold each CDR exactly once, every
outbox row is marked, the file sequence runs 1, 2, 3 without a gap or a repeat, and no temporary file is
left.  Real parts: a child process, files on disk, SQLite and PostgreSQL.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cdf.bx import asn1
from cdf.bx.fileformat import parse_file
from cdf.bx.writer import TEMP_FOLDER, BxFileWriter
from cdf.models import outbox
from charging.clock import ManualClock
from tests.bx.factories import add_to_outbox, bx_settings, make_cdr
from tests.conftest import Database

ROOT = Path(__file__).resolve().parents[2]
ALL_SESSIONS = [f"scscf.example.net;{n};1" for n in range(1, 8)]


def crash_at(database: Database, folder: Path, step: str) -> None:
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bx.crashing_writer",
            database.url,
            database.schema or "",
            str(folder),
            step,
            "3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -9, child.stdout + child.stderr
    assert f"killed at {step}" in child.stdout


def restart_and_finish(database: Database, folder: Path) -> None:
    writer = BxFileWriter(database.new_engine(), bx_settings(folder, max_records=3), owner="cdf-1", clock=ManualClock())
    writer.run_once()
    writer.shutdown()


def sessions_by_sequence(folders: list[Path]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for path in sorted(p for f in folders if f.exists() for p in f.iterdir() if p.is_file()):
        parsed = parse_file(path.read_bytes())
        sequence = parsed.header.file_sequence_number
        assert sequence not in found, f"file sequence number {sequence} used twice"
        found[sequence] = [asn1.decode_record(entry.content)[1]["session-Id"] for entry in parsed.cdrs]
    return found


def assert_each_cdr_once(database: Database, folders: list[Path]) -> None:
    files = sessions_by_sequence(folders)
    assert sorted(files) == list(range(1, len(files) + 1))
    written = [s for sequence in sorted(files) for s in files[sequence]]
    assert sorted(written) == sorted(ALL_SESSIONS)  # none lost, none twice
    with database.engine.connect() as conn:
        assert conn.execute(select(func.count()).where(outbox.c.file_written_at.is_(None))).scalar_one() == 0
    assert list((folders[0] / TEMP_FOLDER).iterdir()) == []


@pytest.mark.parametrize("step", ["appended", "synced", "journaled", "renamed"])
def test_a_crash_at_any_step_of_closing_loses_no_cdr_and_writes_none_twice(
    database: Database, tmp_path: Path, step: str
) -> None:
    folder = tmp_path / "cdr-files"
    add_to_outbox(database.engine, [make_cdr(n) for n in range(1, 8)])

    crash_at(database, folder, step)
    restart_and_finish(database, folder)

    assert_each_cdr_once(database, [folder])


def test_a_file_collected_between_rename_and_mark_is_not_written_again(database: Database, tmp_path: Path) -> None:
    folder, billing = tmp_path / "cdr-files", tmp_path / "collected"
    billing.mkdir()
    add_to_outbox(database.engine, [make_cdr(n) for n in range(1, 8)])

    crash_at(database, folder, "renamed")
    (published,) = [p for p in folder.iterdir() if p.is_file()]
    shutil.move(published, billing / published.name)  # the billing system took it before the writer marked it
    restart_and_finish(database, folder)

    assert_each_cdr_once(database, [folder, billing])
    assert sessions_by_sequence([billing]) == {1: ALL_SESSIONS[:3]}
