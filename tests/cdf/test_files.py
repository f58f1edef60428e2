"""Rotated JSON-lines CDR files: written under a temporary name, renamed when full, old or stopped; rows marked."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from cdf.models import outbox
from cdf.queries import backlog
from charging.cdr import Cdr
from charging.clock import ManualClock
from tests.cdf.acrs import T0
from tests.cdf.harness import RunningCdf, ims_node, running_cdf, send_acr
from tests.conftest import Database
from tests.support.diameter import wait_until


def unwritten(cdf: RunningCdf) -> int:
    with cdf.engine.connect() as conn:
        return int(backlog(conn, 0.0)["unwritten_to_jsonl_files"])


async def test_cdrs_go_to_files_rotated_by_count_and_age_and_renamed_when_closed(
    database: Database, tmp_path: Path
) -> None:
    directory = tmp_path / "cdr-files"
    directory.mkdir()
    (directory / "cdr_crashed_20251231T235959Z_000001.jsonl.tmp").write_text('{"left": "over"}\n')
    clock = ManualClock(T0)
    async with running_cdf(
        database.engine,
        clock=clock,
        files_enabled=True,
        files_directory=str(directory),
        file_max_records=3,
        file_max_age_seconds=60,
        file_poll_seconds=0.05,
    ) as cdf:
        files = cdf.service.files
        assert files is not None
        assert (directory / "cdr_crashed_20251231T235959Z_000001.jsonl").exists()  # a crashed writer's file, closed
        async with ims_node(cdf.port, "scscf.test") as scscf:
            for n in range(4):
                for number, kind in enumerate(["START", "INTERIM", "STOP"]):
                    await send_acr(scscf, session_id=f"scscf.test;1;{n}", record_type=kind, record_number=number)
        await wait_until(lambda: unwritten(cdf) == 0, 10, "CDRs written to files")
        closed_by_count = sorted(p.name for p in directory.glob("cdr_cdf-1_*.jsonl"))
        assert len(closed_by_count) == 2  # 8 CDRs, 3 per file: the third file is still open
        assert len(list(directory.glob("*.jsonl.tmp"))) == 1
        clock.advance(60)
        await wait_until(lambda: not list(directory.glob("*.jsonl.tmp")), 10, "the old file rotated")
        with cdf.engine.connect() as conn:
            stored = list(
                conn.execute(
                    select(outbox.c.payload, outbox.c.jsonl_written_at, outbox.c.file_written_at).order_by(outbox.c.id)
                )
            )
    assert all(row[1] is not None for row in stored)
    assert all(row[2] is None for row in stored)  # the TS 32.297 writer's mark is its own
    written = [line for path in sorted(directory.glob("cdr_cdf-1_*.jsonl")) for line in path.read_text().splitlines()]
    assert [len(p.read_text().splitlines()) for p in sorted(directory.glob("cdr_cdf-1_*.jsonl"))] == [3, 3, 2]
    assert written == [row[0] for row in stored]
    assert all(Cdr.from_json(line).cdr_id for line in written)
