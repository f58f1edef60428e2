"""The clock's part of CDR assembly: closes silent sessions as incomplete and over-long records as partial.

Driven by the injected clock: ``sweep()`` closes whatever is due at the clock's now, and the background
loop calls it every ``interval`` seconds.  Each sweep runs through the GroupCommitter like the ACRs do, so
the CDRs it closes reach the outbox in the same way.  Every hour or so it also purges ACR log rows and
delivered CDRs past their retention.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cdf.store import CdfStore
from charging.cdr import Cdr
from charging.clock import Clock
from charging.db import DatabaseUnavailable, GroupCommitter
from charging.tasks import Periodic

log = logging.getLogger("charging.cdf")

PURGE_EVERY_SECONDS = 3600.0


class Sweeper:
    def __init__(
        self,
        committer: GroupCommitter,
        store: CdfStore,
        clock: Clock,
        *,
        interval: float,
        batch: int,
        retention_seconds: float,
        marks: list[str],
        on_cdrs: Callable[[list[Cdr]], None] | None = None,
    ) -> None:
        self.committer = committer
        self.store = store
        self.clock = clock
        self.interval = interval
        self.batch = batch
        self.retention = retention_seconds
        self.marks = marks  # the outbox columns every enabled sink marks: a CDR is purged once all are set
        self.on_cdrs = on_cdrs
        self._rounds = Periodic("cdf-sweeper", interval, self._round)
        self._last_purge: float | None = None
        self.closed_total = 0
        self.database_ok = True  # whether the last sweep reached the database

    async def sweep(self) -> list[Cdr]:
        """Close everything due at the clock's now; returns the CDRs closed."""
        now = self.clock.now()
        closed: list[Cdr] = []
        while True:
            seen, cdrs = await self.committer.run(lambda conn: self.store.sweep(conn, now, self.batch))
            closed.extend(cdrs)
            if cdrs and self.on_cdrs is not None:
                self.on_cdrs(cdrs)
            if seen < self.batch:
                break
        self.closed_total += len(closed)
        return closed

    async def purge(self) -> tuple[int, int]:
        before = self.clock.now() - self.retention
        acrs, cdrs = await self.committer.run(lambda conn: self.store.purge(conn, before, marks=self.marks))
        if acrs or cdrs:
            log.info("purged %d ACR log rows and %d delivered CDRs past retention", acrs, cdrs)
        return acrs, cdrs

    def start(self) -> None:
        self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()

    async def _round(self) -> None:
        try:
            await self.sweep()
            self.database_ok = True
            now = self.clock.now()
            if self._last_purge is None or now - self._last_purge >= PURGE_EVERY_SECONDS:
                self._last_purge = now
                await self.purge()
        except DatabaseUnavailable as exc:
            self.database_ok = False
            log.warning("sweep skipped, database unavailable: %s", exc)
