"""The live feed of stored CDRs, for the page: Server-Sent Events read from the database.

The stream reads ``billing_cdrs`` by id, so it shows CDRs stored by every billing instance,
not only this one; the local consumer wakes it up at once after each commit
(``FeedHub.publish``, thread-safe), and without such a wake-up it looks again every
``feed_poll_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any

from sqlalchemy import Engine, func, select

from billing import models
from billing.ingest import feed_item

_BATCH = 200
_HEARTBEAT_SECONDS = 15.0


class FeedHub:
    """Wakes the feed streams of one event loop; ``publish`` may be called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.closing = False

    def publish(self, items: list[dict[str, Any]] | None = None) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop: its stream is gone
                loop.call_soon_threadsafe(event.set)

    def close(self) -> None:
        self.closing = True
        self.publish()

    def subscribe(self) -> asyncio.Event:
        event = asyncio.Event()
        with self._lock:
            self._waiters.add((asyncio.get_running_loop(), event))
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        with self._lock:
            self._waiters = {(loop, e) for loop, e in self._waiters if e is not event}


def last_cdr_row_id(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(models.cdrs.c.id), 0))).scalar_one())


def cdrs_after(engine: Engine, after: int, account_id: int | None = None, limit: int = _BATCH) -> list[dict[str, Any]]:
    table = models.cdrs
    query = select(table).where(table.c.id > after).order_by(table.c.id).limit(limit)
    if account_id is not None:
        query = query.where(table.c.account_id == account_id)
    with engine.connect() as conn:
        return [feed_item(row.id, row) for row in conn.execute(query)]


def sse_event(item: dict[str, Any]) -> bytes:
    return f"id: {item['id']}\nevent: cdr\ndata: {json.dumps(item, separators=(',', ':'))}\n\n".encode()


HEARTBEAT = b": keep-alive\n\n"
HEARTBEAT_SECONDS = _HEARTBEAT_SECONDS
