"""The SQL shapes billing needs on both SQLite and PostgreSQL: insert-if-absent, add-to-counters, and the
bulk statements of ingestion.

Ingestion writes thousands of rows per transaction, so its statements are plain SQL text made once per
shape and run through the connection's driver (``exec_driver_sql``, which still turns driver errors into
SQLAlchemy's and invalidates a broken connection); rows are tuples of driver values, made with each
column type's own bind processor (``binder``).  The few per-batch reads and everything else go through
SQLAlchemy Core as usual.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, Connection, Table, exc
from sqlalchemy.dialects import postgresql, sqlite

from billing.models import UtcDateTime


def _insert(conn: Connection, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"billing supports SQLite and PostgreSQL, not {conn.dialect.name}")


def insert_ignoring_duplicates(conn: Connection, table: Table, conflict_on: Sequence[str]) -> Any:
    """``INSERT ... ON CONFLICT (conflict_on) DO NOTHING``."""
    return _insert(conn, table).on_conflict_do_nothing(index_elements=list(conflict_on))


def _identity(value: Any) -> Any:
    return value


def _sqlite_utc_text(value: datetime | None) -> str | None:
    """What SQLAlchemy stores for a UtcDateTime on SQLite, made by datetime's C code."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


_PROBES = (datetime(2026, 3, 2, 7, 0, tzinfo=UTC), datetime(999, 12, 31, 23, 59, 59, 1, tzinfo=UTC))


def binder(conn: Connection, column: Column[Any]) -> Callable[[Any], Any]:
    """The column type's conversion of a Python value into a driver value (None stays None)."""
    process = column.type._cached_bind_processor(conn.dialect)
    if process is None:
        return _identity
    if (
        conn.dialect.name == "sqlite"
        and isinstance(column.type, UtcDateTime)
        and all(_sqlite_utc_text(probe) == process(probe) for probe in _PROBES)
    ):
        return _sqlite_utc_text  # the same text, several times faster than the generic processors

    def bind(value: Any) -> Any:
        return None if value is None else process(value)

    return bind


def _postgresql(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _marks(conn: Connection, count: int) -> str:
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    return "(" + ", ".join([mark] * count) + ")"


def add_to_counters(conn: Connection, table: Table, keys: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """Insert each row, or add its counter columns onto the existing row with the same ``keys``.

    Rows are applied in key order so that two transactions touching the same rows lock them
    in the same order and cannot deadlock each other.
    """
    if not rows:
        return
    columns = list(rows[0])
    binders = [binder(conn, table.c[name]) for name in columns]
    ordered = sorted(rows, key=lambda row: tuple(str(row[k]) for k in keys))
    params = [tuple(bind(row[name]) for name, bind in zip(columns, binders, strict=True)) for row in ordered]
    conn.exec_driver_sql(_upsert_sql(conn.dialect.paramstyle, table.name, tuple(columns), tuple(keys)), params)


@functools.lru_cache(maxsize=64)
def _upsert_sql(paramstyle: str, table: str, columns: tuple[str, ...], keys: tuple[str, ...]) -> str:
    mark = "?" if paramstyle == "qmark" else "%s"
    updates = ", ".join(f"{name} = {table}.{name} + excluded.{name}" for name in columns if name not in keys)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"
        f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    )


# Parameters per statement stay well under SQLite's (32 766) and PostgreSQL's (65 535) limits.
_MAX_PARAMETERS = 30_000


def existing(conn: Connection, table: Table, column: str, values: list[Any]) -> set[Any]:
    """Those of ``values`` that ``table.column`` holds already."""
    if not values:
        return set()
    if _postgresql(conn):
        result = conn.exec_driver_sql(f"SELECT {column} FROM {table.name} WHERE {column} = ANY(%s)", (values,))
        return {row[0] for row in result}
    found: set[Any] = set()
    for start in range(0, len(values), _MAX_PARAMETERS):
        chunk = values[start : start + _MAX_PARAMETERS]
        sql = f"SELECT {column} FROM {table.name} WHERE {column} IN ({', '.join('?' * len(chunk))})"
        found.update(row[0] for row in conn.exec_driver_sql(sql, tuple(chunk)))
    return found


def insert_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: list[tuple[Any, ...]],
    *,
    conflict_on: Sequence[str] = (),
    returning: Sequence[str] = (),
) -> list[tuple[Any, ...]]:
    """Insert many rows (tuples of driver values in ``columns`` order) in as few statements as the driver allows.

    With ``conflict_on`` the rows that exist already are skipped (ON CONFLICT DO NOTHING); ``returning``
    names columns to give back for the rows really inserted.  SQLite: one multi-row VALUES statement per
    chunk when rows come back, else one prepared statement run for every row (``executemany``).
    PostgreSQL: COPY, straight into the table, or into a temporary twin of it and then one
    ``INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING`` (psycopg formats COPY rows in C, several
    times faster than any VALUES form).
    """
    if not rows:
        return []
    if _postgresql(conn):
        return _copy_rows(conn, table, columns, rows, conflict_on, returning)
    names = ", ".join(columns)
    tail = ""
    if conflict_on:
        tail += f" ON CONFLICT ({', '.join(conflict_on)}) DO NOTHING"
    if not returning:
        conn.exec_driver_sql(f"INSERT INTO {table.name} ({names}) VALUES {_marks(conn, len(columns))}{tail}", rows)
        return []
    tail += f" RETURNING {', '.join(returning)}"
    per_statement = max(1, _MAX_PARAMETERS // len(columns))
    group = _marks(conn, len(columns))
    returned: list[tuple[Any, ...]] = []
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        values = tuple(itertools.chain.from_iterable(chunk))
        sql = f"INSERT INTO {table.name} ({names}) VALUES {', '.join([group] * len(chunk))}{tail}"
        returned += [tuple(r) for r in conn.exec_driver_sql(sql, values)]
    return returned


@contextmanager
def _driver_errors(conn: Connection, statement: str) -> Iterator[None]:
    """Driver errors of work done on the raw driver connection, raised as SQLAlchemy raises them."""
    dbapi = conn.dialect.loaded_dbapi
    try:
        yield
    except dbapi.Error as error:
        invalidated = conn.dialect.is_disconnect(error, conn.connection.dbapi_connection, None)
        if invalidated:
            conn.invalidate(error)
        raise exc.DBAPIError.instance(
            statement, None, error, dbapi.Error, connection_invalidated=invalidated, dialect=conn.dialect
        ) from error


def _copy_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: list[tuple[Any, ...]],
    conflict_on: Sequence[str],
    returning: Sequence[str],
) -> list[tuple[Any, ...]]:
    names = ", ".join(columns)
    direct = not conflict_on and not returning
    target = table.name if direct else f"{table.name}_incoming"
    statement = f"COPY {target} ({names}) FROM STDIN"
    with _driver_errors(conn, statement):
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if not direct:
                # Per connection, emptied by every commit; the column types without the constraints.  A
                # transaction starts with it empty: the rows of one that failed went with its rollback.
                cursor.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {target} ON COMMIT DELETE ROWS"
                    f" AS SELECT {', '.join(c.name for c in table.columns)} FROM {table.name} WITH NO DATA"
                )
                cursor.execute(f"DELETE FROM {target}")  # a second batch in the same transaction
            with cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
        finally:
            cursor.close()
    if direct:
        return []
    sql = f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {target}"
    if conflict_on:
        sql += f" ON CONFLICT ({', '.join(conflict_on)}) DO NOTHING"
    if returning:
        sql += f" RETURNING {', '.join(returning)}"
    result = conn.exec_driver_sql(sql)
    return [tuple(r) for r in result] if returning else []


def bulk_insert(
    conn: Connection,
    table: Table,
    rows: list[dict[str, Any]],
    *,
    conflict_on: Sequence[str] = (),
    returning: Sequence[str] = (),
) -> list[tuple[Any, ...]]:
    """``insert_rows`` for rows given as dicts of Python values (each column type's bind processor applied)."""
    if not rows:
        return []
    columns = list(rows[0])
    binders = [binder(conn, table.c[name]) for name in columns]
    values = [tuple(bind(row[name]) for name, bind in zip(columns, binders, strict=True)) for row in rows]
    return insert_rows(conn, table, columns, values, conflict_on=conflict_on, returning=returning)
