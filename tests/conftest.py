"""Shared fixtures: a migrated database on SQLite and on PostgreSQL for every test that touches storage."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from charging.db import make_engine, migrate
from charging.eventloop import loop_factory

POSTGRES_URL = os.environ.get("CHARGING_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any] | None:
    """Asynchronous tests run on the loop that charging's processes run on (``charging.eventloop``)."""
    factory = loop_factory()
    return {"uvloop": factory} if factory is not None else None


class Database:
    """A fresh, migrated database: a SQLite file, or a PostgreSQL schema of its own."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.schema: str | None = None
        if kind == "sqlite":
            self.url = f"sqlite:///{tmp_path / 'charging.db'}"
        else:
            self.url = POSTGRES_URL
            self.schema = f"t_{uuid.uuid4().hex[:12]}"
            admin = make_engine(POSTGRES_URL)
            with admin.begin() as conn:
                conn.execute(text(f"CREATE SCHEMA {self.schema}"))
            admin.dispose()
        self.engine = make_engine(self.url, schema=self.schema)
        migrate(self.engine)

    def new_engine(self) -> Engine:
        """Another engine on the same database, as a second process would have."""
        return make_engine(self.url, schema=self.schema)

    def drop(self) -> None:
        self.engine.dispose()
        if self.schema:
            admin = make_engine(POSTGRES_URL)
            with admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA {self.schema} CASCADE"))
            admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    db = Database(request.param, tmp_path)
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture
def engine(database: Database) -> Engine:
    return database.engine
