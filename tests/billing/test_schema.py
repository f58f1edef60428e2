"""The billing migration creates exactly the tables, columns, keys and indexes billing/models.py declares.

Real parts: SQLite and PostgreSQL through the ``database`` fixture.
"""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import billing.models
from charging.db import metadata
from tests.conftest import Database

BILLING_TABLES = {table.name for table in billing.models.TABLES}


def _billing_only(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    table = obj if type_ == "table" else getattr(obj, "table", None)
    table_name = name if type_ == "table" else getattr(table, "name", None)
    return table_name in BILLING_TABLES


def test_migrated_billing_schema_matches_the_models(database: Database) -> None:
    assert {t for t in metadata.tables if t.startswith("billing_")} == BILLING_TABLES
    with database.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_object": _billing_only, "compare_type": True, "target_metadata": metadata}
        )
        differences = compare_metadata(context, metadata)
    assert differences == []
