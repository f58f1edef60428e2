"""The Bx file writer over real parts: files on disk, the CDF outbox on SQLite and PostgreSQL.

Files close by CDR count, by size, by age and on shutdown; they are read back with the file parser and
pycrate; every CDR lands in exactly one file and is marked; sequence numbers survive restarts.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from sqlalchemy import Connection, func, select, update

from cdf.bx import asn1, records
from cdf.bx.fileformat import FileClosureReason, HeaderTime, Release, parse_file
from cdf.bx.models import file, file_cdr
from cdf.bx.writer import TEMP_FOLDER, BxFileWriter
from cdf.models import outbox
from charging.cdr import RecordType
from charging.clock import ManualClock
from charging.db import GroupCommitter
from tests.bx.factories import add_to_outbox, bx_settings, make_cdr, outbox_row
from tests.conftest import Database


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The output folder (tmp_path holds the SQLite database too)."""
    return tmp_path / "cdr-files"


def new_writer(
    database: Database, folder: Path, clock: ManualClock, owner: str = "cdf-1", **settings: Any
) -> BxFileWriter:
    return BxFileWriter(database.new_engine(), bx_settings(folder, **settings), owner=owner, clock=clock)


def completed_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def sessions_in(path: Path) -> list[str]:
    """The session ids of the CDRs in a file, in file order, decoded with pycrate."""
    return [asn1.decode_record(entry.content)[1]["session-Id"] for entry in parse_file(path.read_bytes()).cdrs]


def add(database: Database, numbers: range, **overrides: Any) -> list[int]:
    return add_to_outbox(database.engine, [make_cdr(n, **overrides) for n in numbers])


def unmarked(database: Database) -> int:
    with database.engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(outbox.c.file_written_at.is_(None))).scalar_one())


def test_files_close_at_the_cdr_count_limit_and_shutdown_closes_the_rest(database: Database, folder: Path) -> None:
    clock = ManualClock()
    writer = new_writer(database, folder, clock, max_records=3)
    add(database, range(1, 8))

    closed = writer.run_once()

    assert [(c.file_sequence_number, c.cdr_count, c.closure_reason) for c in closed] == [
        (1, 3, FileClosureReason.CDR_COUNT_LIMIT),
        (2, 3, FileClosureReason.CDR_COUNT_LIMIT),
    ]
    assert writer.open_cdr_count == 1
    assert unmarked(database) == 1  # the CDR in the open file is not marked yet

    last = writer.shutdown()

    assert last is not None and (last.file_sequence_number, last.cdr_count) == (3, 1)
    assert last.closure_reason == FileClosureReason.NORMAL
    files = completed_files(folder)
    assert [sessions_in(f) for f in files] == [
        [f"scscf.example.net;{n};1" for n in (1, 2, 3)],
        [f"scscf.example.net;{n};1" for n in (4, 5, 6)],
        ["scscf.example.net;7;1"],
    ]
    assert [parse_file(f.read_bytes()).header.closure_reason for f in files] == [3, 3, 0]
    assert unmarked(database) == 0


def test_files_close_before_the_size_limit_would_be_passed(database: Database, folder: Path) -> None:
    limit = 2048
    writer = new_writer(database, folder, ManualClock(), max_file_bytes=limit)
    add(database, range(1, 11))

    writer.run_once()
    writer.shutdown()

    files = completed_files(folder)
    sizes = [f.stat().st_size for f in files]
    assert all(size <= limit for size in sizes)
    assert len(files) >= 3
    reasons = [parse_file(f.read_bytes()).header.closure_reason for f in files]
    assert reasons[:-1] == [FileClosureReason.SIZE_LIMIT] * (len(files) - 1)
    assert reasons[-1] == FileClosureReason.NORMAL
    assert [s for f in files for s in sessions_in(f)] == [f"scscf.example.net;{n};1" for n in range(1, 11)]


def test_an_open_file_closes_once_it_reaches_its_age_limit(database: Database, folder: Path) -> None:
    clock = ManualClock()
    writer = new_writer(database, folder, clock, max_file_age_seconds=60)
    add(database, range(1, 3))
    assert writer.run_once() == []

    clock.advance(30)
    add(database, range(3, 4))
    assert writer.run_once() == []  # 30 s old: still open, and the new CDR joined it
    clock.advance(30)
    closed = writer.run_once()

    assert [(c.cdr_count, c.closure_reason) for c in closed] == [(3, FileClosureReason.TIME_LIMIT)]
    header = parse_file(closed[0].path.read_bytes()).header
    assert header.opened == HeaderTime.at(clock.now() - 60)
    assert header.last_append == HeaderTime.at(clock.now() - 30)
    assert writer.run_once() == [] and completed_files(folder) == [closed[0].path]


def test_the_file_header_describes_the_file(database: Database, folder: Path) -> None:
    clock = ManualClock(1_773_585_005.0)  # 2026-03-15T14:30:05Z
    writer = new_writer(
        database,
        folder,
        clock,
        node_ip_address="2001:db8::5",
        utc_offset_minutes=60,
        routing_filter="ims",
        release=17,
        version=3,
    )
    add(database, range(1, 5), record_type=RecordType.P_CSCF)
    writer.run_once()
    clock.advance(90)
    closed = writer.close_file()

    assert closed is not None
    data = closed.path.read_bytes()
    parsed = parse_file(data)
    header = parsed.header
    assert header.file_length == len(data)
    assert (header.cdr_count, header.file_sequence_number) == (4, 1)
    assert header.closure_reason == FileClosureReason.MANUAL_INTERVENTION
    assert header.node_address == ipaddress.ip_address("2001:db8::5")
    assert header.high == header.low == Release(17, 3)
    assert header.opened == HeaderTime(3, 15, 15, 30, 60)
    assert header.routing_filter == b"ims" and header.lost_cdr_indicator == 0
    assert closed.path.name == "cdf1_-_0000000001.20260315_-_1530+0100"
    for entry in parsed.cdrs:
        assert (entry.header.release, entry.header.data_record_format, entry.header.ts_number) == (Release(17, 3), 1, 9)
        name, value = asn1.decode_record(entry.content)
        assert name == "pCSCFRecord"
        assert records.decode_timestamp(value["recordOpeningTime"]).utcoffset().total_seconds() == 3600  # type: ignore[union-attr]


def test_every_cdr_lands_in_exactly_one_file_and_is_marked(database: Database, folder: Path) -> None:
    clock = ManualClock()
    writer = new_writer(database, folder, clock, max_records=4, batch=3)
    ids = add(database, range(1, 11))
    with database.engine.begin() as conn:  # the Kafka publisher's mark does not matter to the file sink
        conn.execute(update(outbox).where(outbox.c.id.in_(ids[:5])).values(published_at=1.0))
    writer.run_once()
    add(database, range(11, 14))
    clock.advance(1)
    writer.run_once()
    writer.shutdown()

    written = [s for f in completed_files(folder) for s in sessions_in(f)]
    assert written == [f"scscf.example.net;{n};1" for n in range(1, 14)]
    with database.engine.connect() as conn:
        marks = conn.execute(select(outbox.c.file_written_at)).scalars().all()
        journal = conn.execute(select(func.count()).select_from(file_cdr)).scalar_one()
    assert len(marks) == 13 and None not in marks
    assert journal == 13


def test_file_sequence_numbers_continue_after_a_restart(database: Database, folder: Path) -> None:
    clock = ManualClock()
    first = new_writer(database, folder, clock, max_records=2)
    add(database, range(1, 5))
    first.run_once()
    first.shutdown()

    second = new_writer(database, folder, clock, owner="cdf-2", max_records=2)
    add(database, range(5, 8))
    closed = second.run_once()
    last = second.shutdown()

    assert [c.file_sequence_number for c in closed] + [last.file_sequence_number if last else None] == [3, 4]
    assert [parse_file(f.read_bytes()).header.file_sequence_number for f in completed_files(folder)] == [1, 2, 3, 4]


def test_the_output_folder_shows_only_completed_files(database: Database, folder: Path) -> None:
    writer = new_writer(database, folder, ManualClock())
    add(database, range(1, 4))
    writer.run_once()

    assert completed_files(folder) == []  # the open file is under .tmp/
    assert [p.name.startswith("bx-") for p in (folder / TEMP_FOLDER).iterdir()] == [True]

    writer.shutdown()
    assert len(completed_files(folder)) == 1
    assert list((folder / TEMP_FOLDER).iterdir()) == []


def test_a_cdr_that_cannot_be_encoded_is_set_aside_without_blocking_the_rest(database: Database, folder: Path) -> None:
    writer = new_writer(database, folder, ManualClock())
    good = add(database, range(1, 3))
    bad = make_cdr(3)
    with database.engine.begin() as conn:
        row = outbox_row(bad) | {"payload": '{"schema_version": 1, "cdr_id": "broken"}'}
        bad_id = conn.execute(outbox.insert().values(**row).returning(outbox.c.id)).scalar_one()
    good += add(database, range(4, 5))

    writer.run_once()
    writer.shutdown()

    assert [s for f in completed_files(folder) for s in sessions_in(f)] == [
        f"scscf.example.net;{n};1" for n in (1, 2, 4)
    ]
    assert writer.rejected == 1
    with database.engine.connect() as conn:
        reason = conn.execute(select(file_cdr.c.rejected_reason).where(file_cdr.c.outbox_id == bad_id)).scalar_one()
        still_unmarked = conn.execute(select(outbox.c.id).where(outbox.c.file_written_at.is_(None))).scalars().all()
    assert "validation error" in reason
    assert still_unmarked == [bad_id]


def test_only_the_lease_holder_writes_until_it_shuts_down(database: Database, folder: Path) -> None:
    clock = ManualClock()
    holder = new_writer(database, folder, clock, owner="cdf-1")
    other = new_writer(database, folder, clock, owner="cdf-2")
    add(database, range(1, 3))
    holder.run_once()

    assert other.run_once() == [] and other.open_cdr_count == 0
    holder.shutdown()
    add(database, range(3, 4))
    assert other.run_once() == [] and other.open_cdr_count == 1
    other.shutdown()

    assert [sessions_in(f) for f in completed_files(folder)] == [
        ["scscf.example.net;1;1", "scscf.example.net;2;1"],
        ["scscf.example.net;3;1"],
    ]


def test_a_silent_lease_holder_is_replaced_after_the_lease_expires(database: Database, folder: Path) -> None:
    clock = ManualClock()
    gone = new_writer(database, folder, clock, owner="cdf-1", lease_seconds=10)
    successor = new_writer(database, folder, clock, owner="cdf-2", lease_seconds=10)
    add(database, range(1, 3))
    gone.run_once()  # then it dies without closing: its temporary file stays behind

    clock.advance(5)
    assert successor.run_once() == [] and successor.open_cdr_count == 0
    clock.advance(6)
    successor.run_once()
    assert successor.open_cdr_count == 2
    assert len(list((folder / TEMP_FOLDER).iterdir())) == 1  # the dead writer's file was dropped
    successor.shutdown()
    assert [sessions_in(f) for f in completed_files(folder)] == [["scscf.example.net;1;1", "scscf.example.net;2;1"]]


def test_journal_rows_of_closed_files_are_purged_after_the_retention(database: Database, folder: Path) -> None:
    clock = ManualClock()
    writer = new_writer(database, folder, clock, max_records=1, retention_days=1)
    add(database, range(1, 3))
    writer.run_once()
    clock.advance(2 * 86400)
    writer.run_once()

    with database.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(file)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(file_cdr)).scalar_one() == 0
    assert len(completed_files(folder)) == 2 and unmarked(database) == 0


def test_the_background_thread_writes_and_closes_its_file_on_stop(database: Database, folder: Path) -> None:
    writer = BxFileWriter(database.new_engine(), bx_settings(folder, poll_seconds=0.02), owner="cdf-1")
    writer.start()
    try:
        add(database, range(1, 6))
        deadline = time.monotonic() + 10
        while writer.open_cdr_count < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        writer.stop()

    files = completed_files(folder)
    assert len(files) == 1
    assert parse_file(files[0].read_bytes()).header.closure_reason == FileClosureReason.NORMAL
    assert sessions_in(files[0]) == [f"scscf.example.net;{n};1" for n in range(1, 6)]
    assert unmarked(database) == 0


def test_a_file_is_never_renamed_over_an_existing_one(database: Database, folder: Path) -> None:
    writer = new_writer(database, folder, ManualClock())
    add(database, range(1, 3))
    writer.run_once()
    intruder = folder / "cdf1_-_0000000001.20260101_-_0000+0000"
    intruder.write_bytes(b"someone else's file")

    with pytest.raises(FileExistsError):
        writer.close_file()

    assert intruder.read_bytes() == b"someone else's file"
    assert unmarked(database) == 2
    intruder.rename(folder.parent / "moved-away")
    writer.run_once()  # recovery publishes the journaled file now
    assert [sessions_in(f) for f in completed_files(folder)] == [["scscf.example.net;1;1", "scscf.example.net;2;1"]]
    assert unmarked(database) == 0


def test_every_transaction_can_run_through_the_cdf_database_writer(database: Database, folder: Path) -> None:
    committer = GroupCommitter(database.new_engine())
    units: list[object] = []

    def run_write(unit: Callable[[Connection], Any]) -> Any:
        units.append(unit)
        return committer.run_sync(unit)

    engine = database.new_engine()
    writer = BxFileWriter(
        engine, bx_settings(folder, max_records=2), owner="cdf-1", clock=ManualClock(), run_write=run_write
    )
    add(database, range(1, 4))
    with patch.object(engine, "begin", side_effect=AssertionError("the engine was used directly")):
        writer.run_once()
        writer.shutdown()

    assert [len(sessions_in(f)) for f in completed_files(folder)] == [2, 1]
    assert unmarked(database) == 0
    assert len(units) >= 6  # lease, fetch, sequence, journal, mark ... each one unit


@pytest.mark.parametrize("outcome", ["committed", "never", "late"])
def test_a_journal_transaction_of_unknown_outcome_is_settled_by_recovery(
    database: Database, folder: Path, outcome: str
) -> None:
    """run_write gives up on the first journal transaction, which commits anyway, never, or later: just
    before the next file's journal transaction (a unit still queued in the CDF's database writer)."""
    committer = GroupCommitter(database.new_engine())
    syncs = 0
    queued: list[Callable[[Connection], Any]] = []

    def checkpoint(step: str) -> None:
        nonlocal syncs
        if step == "synced":
            syncs += 1
            if syncs == 2 and queued:
                committer.run_sync(queued.pop())

    def run_write(unit: Callable[[Connection], Any]) -> Any:
        if syncs == 1 and not getattr(run_write, "fired", False):
            run_write.fired = True  # type: ignore[attr-defined]
            if outcome == "committed":
                committer.run_sync(unit)
            elif outcome == "late":
                queued.append(unit)
            raise TimeoutError("the database writer did not answer in time")
        return committer.run_sync(unit)

    settings = bx_settings(folder, max_records=2)
    writer = BxFileWriter(
        database.new_engine(), settings, owner="cdf-1", clock=ManualClock(), run_write=run_write, checkpoint=checkpoint
    )
    add(database, range(1, 4))
    with pytest.raises(TimeoutError):
        writer.run_once()
    writer.run_once()
    writer.run_once()
    writer.shutdown()

    files = completed_files(folder)
    assert [sessions_in(f) for f in files] == [
        ["scscf.example.net;1;1", "scscf.example.net;2;1"],
        ["scscf.example.net;3;1"],
    ]
    assert [parse_file(f.read_bytes()).header.file_sequence_number for f in files] == [1, 2]
    assert unmarked(database) == 0
    in_doubt = list((folder / TEMP_FOLDER).iterdir())
    assert len(in_doubt) == (1 if outcome == "never" else 0)  # kept while its transaction might still commit
    new_writer(database, folder, ManualClock()).run_once()  # a restart settles it: nothing is in flight now
    assert list((folder / TEMP_FOLDER).iterdir()) == []
