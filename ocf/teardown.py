"""ASR and RAR towards the clients that hold credit-control sessions (RFC 6733 8.5, RFC 4006 5.5).

Whatever asks for a session to be torn down or re-authorised (an operator blocking an
account, credit running out, a top-up, a tariff change) leaves ``pending_action`` on the
session row; ``Teardown`` sends the ASR or RAR to the session's client through the node
and records the answer.  A client that answers DIAMETER_UNKNOWN_SESSION_ID will never
send the CCR-Terminate, so the OCF closes such a session itself and the account gets
its reservation back.  Sessions whose client is connected to another OCF process are
left for that process.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, or_, select, update

from charging.clock import Clock
from charging.db import GroupCommitter
from charging.diameter import Message
from charging.diameter.constants import AppId, ResultCode
from charging.diameter.node import DiameterNode
from charging.tasks import Periodic
from ocf import models as m
from ocf.control import Book, release_session
from ocf.rating import Catalog
from ocf.store import load_buckets, load_sessions, lock_accounts, write_book

log = logging.getLogger("charging.ocf")

ABORT = "abort"
REAUTH = "reauth"
AUTHORIZE_ONLY = 0  # Re-Auth-Request-Type (RFC 6733 8.12)


@dataclass(frozen=True, slots=True)
class PendingAction:
    session_id: str
    origin_host: str
    origin_realm: str
    action: str


def pending_actions(conn: Connection, now: float, retry_after: float, limit: int = 200) -> list[PendingAction]:
    rows = conn.execute(
        select(
            m.sessions.c.session_id, m.sessions.c.origin_host, m.sessions.c.origin_realm, m.sessions.c.pending_action
        )
        .where(
            m.sessions.c.pending_action.is_not(None),
            m.sessions.c.state == "open",
            or_(m.sessions.c.action_sent_at.is_(None), m.sessions.c.action_sent_at <= now - retry_after),
        )
        .limit(limit)
    )
    return [PendingAction(r.session_id, r.origin_host, r.origin_realm, r.pending_action) for r in rows]


def action_answered(conn: Connection, session_id: str, action: str, done: bool, now: float) -> None:
    """Clear the note once the client answered; keep it (to retry later) when it did not."""
    values: dict[str, Any] = {"action_sent_at": now}
    if done:
        values["pending_action"] = None
    conn.execute(
        update(m.sessions)
        .where(m.sessions.c.session_id == session_id, m.sessions.c.pending_action == action)
        .values(**values)
    )


def close_unknown(conn: Connection, session_id: str, now: float) -> bool:
    """The client does not know the session: release what it holds, as for a silent session."""
    found = conn.execute(select(m.sessions.c.account_id).where(m.sessions.c.session_id == session_id)).scalar()
    if found is None:
        return False
    accounts = lock_accounts(conn, [found])
    sessions = load_sessions(conn, [session_id])
    session = sessions.get(session_id)
    if session is None or session.state != "open":
        return False
    book = Book(catalog=Catalog(), accounts=accounts, buckets=load_buckets(conn, accounts), sessions=sessions)
    release_session(book, accounts[session.account_id], session, now, "aborted", "client does not know the session")
    write_book(conn, book, now)
    return True


class Teardown:
    def __init__(
        self,
        node: DiameterNode,
        committer: GroupCommitter,
        clock: Clock,
        poll_seconds: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self.node = node
        self.committer = committer
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.timeout = timeout
        self._rounds = Periodic("ocf-teardown", poll_seconds, self.run_once, first_at_once=True)
        self.sent: dict[str, int] = {ABORT: 0, REAUTH: 0}

    def wake(self) -> None:
        self._rounds.wake()

    def start(self) -> None:
        self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()

    async def run_once(self) -> int:
        """Send every pending ASR and RAR whose client is connected here; returns how many were sent."""
        now = self.clock.now()
        retry_after = max(self.timeout * 2, self.poll_seconds)
        pending = await self.committer.run(lambda conn: pending_actions(conn, now, retry_after))
        mine = [p for p in pending if self._connected(p.origin_host)]
        if mine:
            await asyncio.gather(*(self._send(p) for p in mine))
        return len(mine)

    def _connected(self, host: str) -> bool:
        peer = self.node.peers.get(host.lower())
        return peer is not None and peer.is_open

    async def _send(self, pending: PendingAction) -> None:
        extra = {"session_id": pending.session_id, "icid": None}
        avps: list[tuple[str, Any]] = [
            ("Session-Id", pending.session_id),
            ("Origin-Host", self.node.identity.origin_host),
            ("Origin-Realm", self.node.identity.origin_realm),
            ("Destination-Realm", pending.origin_realm),
            ("Destination-Host", pending.origin_host),
            ("Auth-Application-Id", AppId.CREDIT_CONTROL),
        ]
        command = "ASR" if pending.action == ABORT else "RAR"
        if command == "RAR":
            avps.append(("Re-Auth-Request-Type", AUTHORIZE_ONLY))
        request = Message.request(command, AppId.CREDIT_CONTROL, avps)
        self.sent[pending.action] = self.sent.get(pending.action, 0) + 1
        try:
            answer = await self.node.request(request, peer=pending.origin_host, timeout=self.timeout)
        except (TimeoutError, ConnectionError, OSError) as exc:
            log.warning("%s for %s got no answer: %s", command, pending.session_id, exc, extra=extra)
            await self._record(pending, done=False)
            return
        except Exception as exc:  # no route: the client went away meanwhile
            log.warning("%s for %s not sent: %s", command, pending.session_id, exc, extra=extra)
            await self._record(pending, done=False)
            return
        code = answer.get("Result-Code")
        log.info("%s for %s answered %s", command, pending.session_id, code, extra=extra)
        if code == ResultCode.DIAMETER_UNKNOWN_SESSION_ID:
            now = self.clock.now()
            await self.committer.run(lambda conn: close_unknown(conn, pending.session_id, now))
            return
        # Any other answer settles it, but a busy or unreachable client is asked again later.
        transient = (ResultCode.DIAMETER_TOO_BUSY, ResultCode.DIAMETER_UNABLE_TO_DELIVER)
        await self._record(pending, done=code not in transient)

    async def _record(self, pending: PendingAction, done: bool) -> None:
        now = self.clock.now()
        await self.committer.run(lambda conn: action_answered(conn, pending.session_id, pending.action, done, now))
