"""The two SQL shapes billing needs on both SQLite and PostgreSQL: insert-if-absent and add-to-counters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


def _insert(conn: Connection, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"billing supports SQLite and PostgreSQL, not {conn.dialect.name}")


def insert_ignoring_duplicates(conn: Connection, table: Table, conflict_on: Sequence[str]) -> Any:
    """``INSERT ... ON CONFLICT (conflict_on) DO NOTHING``."""
    return _insert(conn, table).on_conflict_do_nothing(index_elements=list(conflict_on))


def add_to_counters(conn: Connection, table: Table, keys: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """Insert each row, or add its counter columns onto the existing row with the same ``keys``.

    Rows are applied in key order so that two transactions touching the same rows lock them
    in the same order and cannot deadlock each other.
    """
    if not rows:
        return
    counters = [name for name in rows[0] if name not in keys]
    statement = _insert(conn, table)
    statement = statement.on_conflict_do_update(
        index_elements=list(keys),
        set_={name: table.c[name] + statement.excluded[name] for name in counters},
    )
    ordered = sorted(rows, key=lambda row: tuple(str(row[k]) for k in keys))
    conn.execute(statement, ordered)


# Parameters per statement stay well under SQLite's (32 766) and PostgreSQL's (65 535) limits.
_MAX_PARAMETERS = 30_000


def bulk_insert(
    conn: Connection,
    table: Table,
    rows: list[dict[str, Any]],
    *,
    conflict_on: Sequence[str] = (),
    returning: Sequence[str] = (),
) -> list[tuple[Any, ...]]:
    """Insert many rows with multi-row VALUES statements built here, for the hot path of ingestion.

    SQLAlchemy's executemany spends more time per row turning parameters into driver values than the
    database spends storing them; this applies each column type's bind processor directly.  With
    ``conflict_on`` the rows that exist already are skipped (ON CONFLICT DO NOTHING); ``returning``
    names columns to give back for the rows really inserted.
    """
    if not rows:
        return []
    if conn.dialect.name == "postgresql":
        return _bulk_insert_copy(conn, table, rows, conflict_on, returning)
    dialect = conn.dialect
    columns = list(rows[0])
    processors = [table.c[name].type._cached_bind_processor(dialect) for name in columns]
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    group = "(" + ", ".join([mark] * len(columns)) + ")"
    head = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
    tail = ""
    if conflict_on:
        tail += f" ON CONFLICT ({', '.join(conflict_on)}) DO NOTHING"
    if returning:
        tail += f" RETURNING {', '.join(returning)}"
    per_statement = max(1, _MAX_PARAMETERS // len(columns))
    returned: list[tuple[Any, ...]] = []
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        values: list[Any] = []
        for row in chunk:
            for name, process in zip(columns, processors, strict=True):
                value = row[name]
                values.append(process(value) if process is not None and value is not None else value)
        sql = head + ", ".join([group] * len(chunk)) + tail
        result = conn.exec_driver_sql(sql, tuple(values))
        if returning:
            returned += [tuple(r) for r in result]
    return returned


def _bulk_insert_copy(
    conn: Connection,
    table: Table,
    rows: list[dict[str, Any]],
    conflict_on: Sequence[str],
    returning: Sequence[str],
) -> list[tuple[Any, ...]]:
    """PostgreSQL: COPY the rows into a temporary twin of ``table``, then one INSERT ... SELECT.

    psycopg turns each placeholder (or array element) into text in Python; COPY rows are
    formatted by its C extension, which makes this several times faster than any VALUES form.
    """
    dialect = conn.dialect
    columns = list(rows[0])
    processors = [table.c[name].type._cached_bind_processor(dialect) for name in columns]
    staging = f"{table.name}_incoming"
    names = ", ".join(columns)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        # Per connection, emptied by every commit; the column types without the constraints.
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {staging} ON COMMIT DELETE ROWS"
            f" AS SELECT {', '.join(c.name for c in table.columns)} FROM {table.name} WITH NO DATA"
        )
        cursor.execute(f"TRUNCATE {staging}")
        with cursor.copy(f"COPY {staging} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(
                    [
                        process(row[name]) if process is not None and row[name] is not None else row[name]
                        for name, process in zip(columns, processors, strict=True)
                    ]
                )
    finally:
        cursor.close()
    sql = f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {staging}"
    if conflict_on:
        sql += f" ON CONFLICT ({', '.join(conflict_on)}) DO NOTHING"
    if returning:
        sql += f" RETURNING {', '.join(returning)}"
    result = conn.exec_driver_sql(sql)
    return [tuple(r) for r in result] if returning else []
