"""The PostgreSQL CCR path's own parts: binary arrays as the server reads them, the pipe's errors and recovery."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from ocf.pg import ByteaArray, Float8Array, Int8Array, PgArray, Pipe, TextArray
from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.postgres

LIBPQ_URL = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")

CASES: list[tuple[PgArray, str, list[Any]]] = [
    (Int8Array([1, -2, 2**62]), "int8[]", [1, -2, 2**62]),
    (Int8Array([1, None, 3]), "int8[]", [1, None, 3]),
    (Int8Array([None, None]), "int8[]", [None, None]),
    (Int8Array([]), "int8[]", []),
    (Float8Array([1.5, 1e300, -0.0, 3]), "float8[]", [1.5, 1e300, -0.0, 3.0]),
    (Float8Array([None, 2.25]), "float8[]", [None, 2.25]),
    (TextArray(["a", "ünï\"{},\\ '", "", None]), "text[]", ["a", "ünï\"{},\\ '", "", None]),
    (TextArray(["x;1", "NULL"]), "text[]", ["x;1", "NULL"]),
    (TextArray([]), "text[]", []),
    (ByteaArray([b"\x00\xff", b""]), "bytea[]", [b"\x00\xff", b""]),
    (ByteaArray([b"a", None]), "bytea[]", [b"a", None]),
]


async def test_binary_arrays_read_back_as_sent() -> None:
    conn = await psycopg.AsyncConnection.connect(LIBPQ_URL, autocommit=True)
    try:
        pipe = Pipe(conn)
        for array, type_name, _ in CASES:
            pipe.query(f"SELECT $1::{type_name}", array)
        results = await pipe.round_trip()
        assert [rows[0][0] for rows in results] == [expected for _, _, expected in CASES]
    finally:
        await conn.close()


async def test_an_error_is_raised_after_the_round_trip_and_the_connection_goes_on() -> None:
    conn = await psycopg.AsyncConnection.connect(LIBPQ_URL, autocommit=True)
    try:
        pipe = Pipe(conn)
        pipe.command(b"BEGIN")
        first = pipe.query("SELECT 1::int8 WHERE $1::int8[] IS NOT NULL", Int8Array([1]))
        pipe.query("SELECT 1 / 0")
        pipe.query("SELECT $1::float8 + 1", 1.0)  # prepared in a round trip that fails: prepared again later
        with pytest.raises(psycopg.errors.DivisionByZero):
            await pipe.round_trip()
        pipe.command(b"ROLLBACK")
        assert await pipe.round_trip() == []
        assert first == 0
        pipe.query("SELECT $1::float8 + 1", 1.0)
        assert await pipe.round_trip() == [[(2.0,)]]
    finally:
        await conn.close()
