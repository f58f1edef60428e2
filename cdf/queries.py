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


def backlog(conn: Connection, now: float) -> dict[str, Any]:
    """How many CDRs wait for Kafka and for files, how old the oldest waiting one is, how many records are open."""
    unpublished, oldest = conn.execute(
        select(func.count(), func.min(outbox.c.created_at)).where(outbox.c.published_at.is_(None))
    ).one()
    unwritten = conn.execute(select(func.count()).where(outbox.c.jsonl_written_at.is_(None))).scalar_one()
    stored = conn.execute(select(func.count()).select_from(outbox)).scalar_one()
    open_records = conn.execute(select(func.count()).select_from(record)).scalar_one()
    return {
        "unpublished": int(unpublished),
        "oldest_unpublished_age_seconds": round(max(0.0, now - oldest), 3) if oldest is not None else None,
        "unwritten_to_jsonl_files": int(unwritten),
        "cdrs_stored": int(stored),
        "open_records": int(open_records),
    }
