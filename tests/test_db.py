"""Database plumbing: migrations apply on SQLite and PostgreSQL; group commits resolve after COMMIT."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, inspect, select

from charging.db import WAL_CHECKPOINT_PAGES, DatabaseUnavailable, GroupCommitter, WriterTurn, make_engine, metadata
from tests.conftest import Database


def test_migrations_create_every_declared_table(database: Database) -> None:
    import billing.models  # noqa: F401  - each package declares its tables on import
    import cdf.models  # noqa: F401
    import ocf.models  # noqa: F401

    present = set(inspect(database.engine).get_table_names(schema=database.schema))
    assert set(metadata.tables) <= present
    assert "alembic_version" in present


async def test_group_committer_batches_and_isolates_a_failing_unit(database: Database) -> None:
    scratch = MetaData()
    table = Table("scratch_units", scratch, Column("id", Integer, primary_key=True), Column("v", String(10)))
    scratch.create_all(database.engine)
    committer = GroupCommitter(database.engine, max_batch=50)
    try:

        def insert(i: int):  # type: ignore[no-untyped-def]
            def work(conn):  # type: ignore[no-untyped-def]
                if i == 13:
                    raise ValueError("unlucky")
                conn.execute(table.insert().values(id=i, v=str(i)))
                return i

            return work

        results = await asyncio.gather(*(committer.run(insert(i)) for i in range(40)), return_exceptions=True)
        assert isinstance(results[13], ValueError)
        assert [r for r in results if not isinstance(r, Exception)] == [i for i in range(40) if i != 13]
        with database.engine.connect() as conn:
            stored = [row[0] for row in conn.execute(select(table.c.id).order_by(table.c.id))]
        assert stored == [i for i in range(40) if i != 13]
        assert committer.units >= 39
    finally:
        committer.stop()
        scratch.drop_all(database.engine)


async def test_a_units_preparation_runs_once_before_its_transaction(database: Database) -> None:
    committer = GroupCommitter(database.engine, max_batch=50)
    steps: list[str] = []
    try:

        def prepare() -> None:
            steps.append("prepare")

        def unit(conn):  # type: ignore[no-untyped-def]
            steps.append("unit")
            return conn.exec_driver_sql("SELECT 1").scalar()

        def failing(conn):  # type: ignore[no-untyped-def]
            raise ValueError("fails its batch")

        def broken_prepare() -> None:
            raise RuntimeError("a defect in the preparation")

        # While the writer is busy, the three queue up and share the next transaction; the failing one then
        # sends the other two to run again, alone.
        gate = threading.Event()
        busy = asyncio.ensure_future(committer.run(lambda conn: gate.wait(10)))
        while committer._queue.qsize():
            await asyncio.sleep(0.001)
        runs = [
            asyncio.ensure_future(committer.run(unit, prepare=prepare)),
            asyncio.ensure_future(committer.run(failing)),
            asyncio.ensure_future(
                committer.run(lambda conn: conn.exec_driver_sql("SELECT 2").scalar(), prepare=broken_prepare)
            ),
        ]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(busy, *runs, return_exceptions=True)
        assert results[1] == 1 and isinstance(results[2], ValueError) and results[3] == 2
        assert steps == ["prepare", "unit", "unit"]
    finally:
        committer.stop()


async def test_unreachable_database_is_reported_as_unavailable() -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    committer = GroupCommitter(engine)
    try:
        with pytest.raises(DatabaseUnavailable):
            await committer.run(lambda conn: conn.exec_driver_sql("SELECT 1"))
    finally:
        committer.stop()


def test_a_sqlite_writer_waits_for_the_turn_another_process_holds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'turns.db'}"
    engine = make_engine(url)
    scratch = MetaData()
    table = Table("scratch_turns", scratch, Column("id", Integer, primary_key=True), Column("by", String(10)))
    scratch.create_all(engine)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, url],
        cwd=Path(__file__).resolve().parent.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    committer = GroupCommitter(engine)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "holding"
        done = threading.Event()

        def write() -> None:
            committer.run_sync(lambda conn: conn.execute(table.insert().values(by="parent")))
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        # The other process holds the turn but no SQLite lock yet: only the turn keeps this write waiting.
        assert not done.wait(0.5)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert done.wait(10)
        writer.join()
        assert holder.wait(10) == 0
        with engine.connect() as conn:
            assert conn.execute(select(table.c.by).order_by(table.c.id)).scalars().all() == ["child", "parent"]
    finally:
        committer.stop()
        holder.kill()
        engine.dispose()


# The other process: takes its turn, and once told to go on, writes inside it.
_HOLDER = """
import sys
from charging.db import WriterTurn, make_engine
engine = make_engine(sys.argv[1])
with WriterTurn(engine):
    print("holding", flush=True)
    sys.stdin.readline()
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO scratch_turns (by) VALUES ('child')")
"""


def test_threads_sharing_one_turn_take_it_one_at_a_time(tmp_path: Path) -> None:
    turn = WriterTurn(make_engine(f"sqlite:///{tmp_path / 'threads.db'}"))
    inside = 0
    most = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        for _ in range(50):
            with turn:
                with guard:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.0005)  # let the other threads run while this one holds the turn
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    turn.close()
    assert most == 1


def test_postgres_and_memory_databases_take_no_turn() -> None:
    assert WriterTurn(make_engine("sqlite://")).path is None
    assert WriterTurn(make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")).path is None


def test_a_turn_that_cannot_be_taken_leaves_the_writes_to_sqlite_alone(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    committer = GroupCommitter(engine)
    (tmp_path / "plain.db-writer.lock").mkdir()  # in the way: the lock file cannot be opened
    try:
        assert committer.run_sync(lambda conn: conn.exec_driver_sql("SELECT 1").scalar()) == 1
        assert committer._turn.path is None
    finally:
        committer.stop()
        engine.dispose()


def test_sqlite_connections_commit_durably_and_checkpoint_every_16_mb(tmp_path: Path) -> None:
    # WAL with synchronous FULL is what lets an answer leave once its COMMIT returned: the WAL is on disk.
    engine = make_engine(f"sqlite:///{tmp_path / 'durable.db'}")
    try:
        with engine.connect() as conn:
            settings = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "wal_autocheckpoint", "page_size")
            }
    finally:
        engine.dispose()
    assert settings["journal_mode"] == "wal"
    assert settings["synchronous"] == 2  # FULL
    assert settings["wal_autocheckpoint"] == WAL_CHECKPOINT_PAGES
    assert WAL_CHECKPOINT_PAGES * int(settings["page_size"] or 0) == 16_384_000
