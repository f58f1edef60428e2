"""The Alembic migration creates the tables, columns and indexes ocf/models.py declares (SQLite, PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import inspect

from ocf import models
from tests.conftest import Database

OCF_TABLES = [t for name, t in models.metadata.tables.items() if name.startswith("ocf_")]


def test_migrated_schema_matches_the_models(database: Database) -> None:
    found = inspect(database.engine)
    assert {t.name for t in OCF_TABLES} <= set(found.get_table_names())
    for table in OCF_TABLES:
        columns = {c["name"]: c for c in found.get_columns(table.name)}
        assert set(columns) == {c.name for c in table.columns}, table.name
        for column in table.columns:
            assert columns[column.name]["nullable"] == column.nullable, f"{table.name}.{column.name}"
        assert set(found.get_pk_constraint(table.name)["constrained_columns"]) == {c.name for c in table.primary_key}
        indexed = {tuple(ix["column_names"]) for ix in found.get_indexes(table.name)}
        declared = {tuple(c.name for c in ix.columns) for ix in table.indexes}
        assert declared <= indexed, table.name
