"""The migrated schema (Alembic branch cdf) is exactly what cdf.models declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import inspect

from cdf.models import acr_log, lease, outbox, record, sequence
from tests.conftest import Database


def test_migrated_cdf_tables_match_the_models(database: Database) -> None:
    found = inspect(database.engine)
    for table in (acr_log, record, outbox, sequence, lease):
        columns = {c["name"]: c for c in found.get_columns(table.name, schema=database.schema)}
        assert set(columns) == {c.name for c in table.columns}, table.name
        for column in table.columns:
            assert columns[column.name]["nullable"] == column.nullable, f"{table.name}.{column.name}"
        primary = found.get_pk_constraint(table.name, schema=database.schema)["constrained_columns"]
        assert primary == [c.name for c in table.primary_key.columns], table.name
        indexes = {i["name"]: i["column_names"] for i in found.get_indexes(table.name, schema=database.schema)}
        declared = {i.name: [c.name for c in i.columns] for i in table.indexes}
        assert {k: v for k, v in indexes.items() if k in declared or k.startswith("ix_")} == declared, table.name
    uniques = found.get_unique_constraints("cdf_outbox", schema=database.schema)
    assert [u["column_names"] for u in uniques] == [["cdr_id"]]
