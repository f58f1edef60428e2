"""Reads for the HTTP API and the command line: CDRs, open records, the correlated view, the backlog."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, func, select

from cdf.assembly import RecordState
from cdf.correlation import CorrelatedView, correlate
from cdf.models import outbox, record
from charging.cdr import Cdr


def cdrs_of_icid(conn: Connection, icid: str) -> list[Cdr]:
    rows = conn.execute(select(outbox.c.payload).where(outbox.c.icid == icid).order_by(outbox.c.id))
    return [Cdr.from_json(r[0]) for r in rows]


def open_records_of_icid(conn: Connection, icid: str) -> list[RecordState]:
    rows = conn.execute(select(record.c.state).where(record.c.icid == icid))
    return [RecordState.from_json(r[0]) for r in rows]


def correlated_view(conn: Connection, icid: str, home_iois: Iterable[str] = ()) -> CorrelatedView | None:
    """The view of one ICID, or None when the CDF knows nothing of it."""
    cdrs = cdrs_of_icid(conn, icid)
    open_records = open_records_of_icid(conn, icid)
    if not cdrs and not open_records:
        return None
    return correlate(icid, cdrs, open_records, home_iois)


def find_cdr(conn: Connection, cdr_id: str) -> Cdr | None:
    payload = conn.execute(select(outbox.c.payload).where(outbox.c.cdr_id == cdr_id)).scalar()
    return Cdr.from_json(payload) if payload is not None else None


def list_cdrs(
    conn: Connection, *, icid: str | None = None, session_id: str | None = None, after_id: int = 0, limit: int = 100
) -> list[tuple[int, Cdr]]:
    """CDRs in the order they were stored, with their outbox ids (to page on with ``after_id``)."""
    stmt = select(outbox.c.id, outbox.c.payload).where(outbox.c.id > after_id)
    if icid is not None:
        stmt = stmt.where(outbox.c.icid == icid)
    if session_id is not None:
        stmt = stmt.where(outbox.c.session_id == session_id)
    rows = conn.execute(stmt.order_by(outbox.c.id).limit(limit))
    return [(int(r[0]), Cdr.from_json(r[1])) for r in rows]


def waiting(conn: Connection, mark: str, now: float) -> tuple[int, float | None]:
    """How many CDRs the sink that sets outbox column ``mark`` has not delivered, and the oldest one's age."""
    column = outbox.c[mark]
    count = conn.execute(select(func.count()).where(column.is_(None))).scalar_one()
    # The oldest by id, through the sink's partial index, rather than min(created_at) over the whole backlog.
    oldest = conn.execute(select(outbox.c.created_at).where(column.is_(None)).order_by(outbox.c.id).limit(1)).scalar()
    return int(count), (round(max(0.0, now - oldest), 3) if oldest is not None else None)


def open_record_count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(record)).scalar_one())


def backlog(conn: Connection, now: float) -> dict[str, Any]:
    """How many CDRs wait for Kafka and for files, how old the oldest waiting one is, how many records are open."""
    unpublished, oldest_age = waiting(conn, "published_at", now)
    unwritten, _ = waiting(conn, "jsonl_written_at", now)
    stored = conn.execute(select(func.count()).select_from(outbox)).scalar_one()
    return {
        "unpublished": unpublished,
        "oldest_unpublished_age_seconds": oldest_age,
        "unwritten_to_jsonl_files": unwritten,
        "cdrs_stored": int(stored),
        "open_records": open_record_count(conn),
    }
