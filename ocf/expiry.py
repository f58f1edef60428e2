"""Release of silent reservations: the Tcc supervision of RFC 4006 (sections 7 and 13), driven by the clock.

A session that sends no update or termination within its Validity-Time plus the Tcc
margin is closed by the OCF itself and every unit it held goes back to the account.
``Sweeper.sweep(now)`` does one round (tests call it with a ManualClock's time); ``run``
calls it every ``sweep_interval_seconds``.  The same round forgets closed sessions and
stored answers older than the retention, and asks for re-authorisation of the sessions
priced by tariff versions that took effect since the previous round.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection

from charging.clock import Clock
from charging.db import GroupCommitter
from charging.tasks import Periodic
from ocf.credit import Session
from ocf.provisioning import reauth_for_tariffs, tariffs_effective_between
from ocf.settings import OcfSettings
from ocf.store import CreditStore

log = logging.getLogger("charging.ocf")


class Sweeper:
    def __init__(self, store: CreditStore, committer: GroupCommitter, settings: OcfSettings, clock: Clock) -> None:
        self.store = store
        self.committer = committer
        self.settings = settings
        self.clock = clock
        self._last: float | None = None
        self._rounds = Periodic("ocf-sweeper", settings.sweep_interval_seconds, self.sweep, first_at_once=True)
        self.expired_total = 0

    async def sweep(self, now: float | None = None) -> list[Session]:
        """One round at ``now`` (the clock's time by default); returns the sessions it expired."""
        at = self.clock.now() if now is None else now
        since = self._last if self._last is not None else at
        retention = float(self.settings.answer_retention_seconds)

        def work(conn: Connection) -> tuple[list[Session], int]:
            expired = self.store.sweep(conn, at, retention)
            changed = tariffs_effective_between(conn, since, at) if since < at else []
            return expired, reauth_for_tariffs(conn, changed, at) if changed else 0

        expired, reauth = await self.committer.run(work)
        self._last = at
        for session in expired:
            log.info(
                "session silent past Tcc: released %s",
                {k: q.to_json() for k, q in session.quotas.items()} or "nothing",
                extra={"session_id": session.session_id, "icid": None},
            )
        self.expired_total += len(expired)
        if reauth:
            log.info("%d sessions asked to re-authorise after a tariff change", reauth)
        return expired

    def start(self) -> None:
        self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()
