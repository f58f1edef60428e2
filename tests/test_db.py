"""Database plumbing: migrations apply on SQLite and PostgreSQL; group commits resolve after COMMIT."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, inspect, select

from charging.db import DatabaseUnavailable, GroupCommitter, make_engine, metadata
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


async def test_unreachable_database_is_reported_as_unavailable() -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    committer = GroupCommitter(engine)
    try:
        with pytest.raises(DatabaseUnavailable):
            await committer.run(lambda conn: conn.exec_driver_sql("SELECT 1"))
    finally:
        committer.stop()
