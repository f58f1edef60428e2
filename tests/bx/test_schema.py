"""The bx migration creates exactly the tables, columns, keys and indexes cdf/bx/models.py declares."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import cdf.bx.models
from charging.db import metadata
from tests.conftest import Database

BX_TABLES = {table.name for table in cdf.bx.models.TABLES}


def _bx_only(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    table = obj if type_ == "table" else getattr(obj, "table", None)
    table_name = name if type_ == "table" else getattr(table, "name", None)
    return table_name in BX_TABLES


def test_migrated_bx_schema_matches_the_models(database: Database) -> None:
    assert {t for t in metadata.tables if t.startswith("bx_")} == BX_TABLES
    with database.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_object": _bx_only, "compare_type": True, "target_metadata": metadata}
        )
        differences = compare_metadata(context, metadata)
    assert differences == []
