"""What the Kafka publisher and the CDR file writer share: a thread that drains the outbox.

Every database access of a sink runs through ``run_write`` (the CDF's GroupCommitter), so that SQLite
sees one writer.  Each round: hold the sink's lease (one instance of a cluster drains each sink, in outbox
order), read the oldest rows whose mark column is still empty, ``deliver`` them, and mark
those delivered in a transaction that first checks the lease is still ours.  A failed round
backs off (doubling up to a limit) and tries again; nothing is marked that was not delivered,
so the backlog drains by itself once the sink's destination is back.  A crash between
delivery and mark delivers those rows again: consumers deduplicate on ``cdr_id``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Column, Connection

from cdf.store import hold_lease, release_lease
from charging.clock import Clock

log = logging.getLogger("charging.cdf")

T = TypeVar("T")
RunWrite = Callable[[Callable[[Connection], T]], T]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    cdr_id: str
    partition_key: str
    payload: str


@dataclass(frozen=True, slots=True)
class SinkTiming:
    batch: int = 1000
    poll_seconds: float = 0.5  # look for rows written by other instances this often
    backoff_max_seconds: float = 5.0
    lease_seconds: float = 10.0


# The outbox's mark columns, one per sink: the only names ever put into the SQL below.
MARKS = frozenset({"published_at", "jsonl_written_at", "file_written_at"})


def unmarked_rows(conn: Connection, column: str, limit: int) -> list[OutboxRow]:
    """The oldest ``limit`` outbox rows whose ``column`` is not set, in outbox order."""
    if column not in MARKS:
        raise ValueError(f"{column} is not an outbox mark")
    sql = (
        f"SELECT id, cdr_id, partition_key, payload FROM cdf_outbox WHERE {column} IS NULL ORDER BY id "
        f"LIMIT {int(limit)}"
    )
    return [OutboxRow(int(r[0]), r[1], r[2], r[3]) for r in conn.exec_driver_sql(sql)]


def mark_rows(conn: Connection, column: str, ids: list[int], now: float) -> None:
    """Set ``column`` to ``now`` on the rows ``ids``: one statement, whatever their number."""
    if column not in MARKS:
        raise ValueError(f"{column} is not an outbox mark")
    if not ids:
        return
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"UPDATE cdf_outbox SET {column} = %s WHERE id = ANY(%s)", (now, list(ids)))
        return
    # SQLite: the runs of consecutive ids (a round delivers rows in id order, mostly one run), as ranges
    # of the rowid.
    runs: list[tuple[int, int]] = []
    for row_id in sorted(ids):
        if runs and row_id == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], row_id)
        else:
            runs.append((row_id, row_id))
    for start in range(0, len(runs), 200):
        chunk = runs[start : start + 200]
        where = " OR ".join(["id BETWEEN ? AND ?"] * len(chunk))
        params = (now, *(bound for run in chunk for bound in run))
        conn.exec_driver_sql(f"UPDATE cdf_outbox SET {column} = ? WHERE {where}", params)


class OutboxSink:
    """A thread that delivers outbox rows somewhere and marks them in ``column``."""

    lease_name = ""
    column: Column[Any]

    def __init__(self, run_write: RunWrite[Any], *, owner: str, clock: Clock, timing: SinkTiming) -> None:
        self.run_write = run_write
        self.owner = owner
        self.clock = clock
        self.timing = timing
        self.delivered = 0
        self.rounds = 0
        self.last_error: str | None = None
        self.holds_lease = False
        self._lease_until = 0.0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()  # set while the last round found nothing to deliver

    # -- what a sink does ----------------------------------------------------------------------------------
    def deliver(self, rows: list[OutboxRow]) -> tuple[list[int], BaseException | None]:
        """Deliver ``rows``; return the ids delivered and the error that stopped the rest, if any."""
        raise NotImplementedError

    def on_idle(self) -> None:
        """Called when a round found nothing to deliver."""

    def on_stop(self) -> None:
        """Called in the sink's thread as it ends."""

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"cdf-{self.lease_name}", daemon=True)
            self._thread.start()

    def notify(self) -> None:
        """New rows are in the outbox: look now rather than at the next poll."""
        self._idle.clear()
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def healthy(self) -> bool:
        return self.last_error is None

    def wait_idle(self, timeout: float) -> bool:
        """Block until a round found nothing left to deliver (for tests and shutdown)."""
        return self._idle.wait(timeout)

    # -- the loop -------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        backoff = 0.05
        try:
            while not self._stopping.is_set():
                try:
                    busy = self._round()
                except Exception as exc:
                    message = f"{type(exc).__name__}: {exc}"
                    if message != self.last_error:
                        log.warning("CDR %s sink: %s; retrying", self.lease_name, message)
                    self.last_error = message
                    self._sleep(backoff)
                    backoff = min(backoff * 2, self.timing.backoff_max_seconds)
                    continue
                if self.last_error is not None:
                    log.info("CDR %s sink delivers again", self.lease_name)
                    self.last_error = None
                backoff = 0.05
                if not busy:
                    self._idle.set()
                    self.on_idle()
                    self._sleep(self.timing.poll_seconds if self.holds_lease else self.timing.lease_seconds / 2)
        finally:
            try:
                self.on_stop()
            finally:
                if self.holds_lease:
                    try:
                        self.run_write(lambda conn: release_lease(conn, self.lease_name, self.owner))
                    except Exception as exc:  # the lease simply expires
                        log.info("CDR %s sink could not release its lease: %s", self.lease_name, exc)

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _hold_lease(self) -> bool:
        now = self.clock.now()
        if self.holds_lease and self._lease_until - now > self.timing.lease_seconds / 2:
            return True
        duration = self.timing.lease_seconds
        held = bool(self.run_write(lambda conn: hold_lease(conn, self.lease_name, self.owner, now, duration)))
        if held != self.holds_lease:
            log.info("CDR %s sink lease %s by %s", self.lease_name, "taken" if held else "held elsewhere", self.owner)
        self.holds_lease = held
        self._lease_until = now + self.timing.lease_seconds if held else 0.0
        return held

    def _pending(self) -> list[OutboxRow]:
        column, limit = self.column.name, self.timing.batch
        # Through the writer too: on SQLite every transaction takes the write lock (BEGIN IMMEDIATE), and a
        # reader of its own would make the ACR writer wait for it.
        rows: list[OutboxRow] = self.run_write(lambda conn: unmarked_rows(conn, column, limit))
        return rows

    def _mark(self, ids: list[int]) -> bool:
        now = self.clock.now()
        column = self.column.name

        def mark(conn: Connection) -> bool:
            # Fencing: mark only while the lease is still ours, renewing it on the way.
            if not hold_lease(conn, self.lease_name, self.owner, now, self.timing.lease_seconds):
                return False
            mark_rows(conn, column, ids, now)
            return True

        held = bool(self.run_write(mark))
        self.holds_lease = held
        self._lease_until = now + self.timing.lease_seconds if held else 0.0
        return held

    def _round(self) -> bool:
        self.rounds += 1
        if not self._hold_lease():
            return False
        rows = self._pending()
        if not rows:
            return False
        delivered, error = self.deliver(rows)
        if delivered:
            if self._mark(delivered):
                self.delivered += len(delivered)
            else:
                log.warning(
                    "CDR %s sink lost its lease: %d rows it delivered will be delivered again",
                    self.lease_name,
                    len(delivered),
                )
        if error is not None:
            raise error
        return True
