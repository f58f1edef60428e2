"""The OCF as a ``charging serve`` role: Ro handlers on the node, sweeper, ASR/RAR sender, provisioning API."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from aiohttp import web
from sqlalchemy import Connection

from charging.db import DatabaseUnavailable, GroupCommitter
from charging.metrics import Sampled
from charging.service import ServiceContext
from charging.tasks import Periodic
from charging.web import OpenApi
from ocf import pg
from ocf.api import OcfApi
from ocf.control import CreditControl, CreditRequest
from ocf.expiry import Sweeper
from ocf.server import AnswerEncoder, OcfServer
from ocf.store import Batcher, CreditStore, Outcome, Settle, committed, open_session_state
from ocf.teardown import ABORT, REAUTH, Teardown

log = logging.getLogger("charging.ocf")


class OcfService:
    name = "ocf"

    def __init__(self, ctx: ServiceContext) -> None:
        if ctx.node is None:
            raise ValueError("the ocf role needs the Diameter node")
        settings = ctx.settings.ocf
        self.ctx = ctx
        self.settings = settings
        self.clock = ctx.clock
        self.node = ctx.node
        # Provisioning, sweeps and ASR/RAR bookkeeping go through one writer thread.  CCR batches: on
        # PostgreSQL (psycopg) through ``writers`` connections driven from the event loop, whose
        # transactions overlap; elsewhere through that writer thread (SQLite serialises writers anyway).
        self.committer = GroupCommitter(ctx.engine, name="ocf-writer")
        identity = ctx.node.config.identity
        self.control = CreditControl(settings)
        self.store = CreditStore(self.control, AnswerEncoder(settings, identity.origin_host, identity.origin_realm))
        self.settlers: list[pg.PgSettler] = []
        writers: list[Settle[CreditRequest, Outcome]]
        if pg.supported(ctx.engine):
            self.settlers = [pg.PgSettler(ctx.engine, self.store, f"ocf-ccr-{i}") for i in range(settings.writers)]
            writers = [self._settle_pg(s) for s in self.settlers]
            per_writer = 1
        else:
            writers = [committed(self.committer, self._settle)]
            per_writer = 2
        self.batcher: Batcher[CreditRequest, Outcome] = Batcher(writers, settings.max_batch, per_writer)
        self.server = OcfServer(settings, self.batcher)
        self.server.register(ctx.node)
        self.sweeper = Sweeper(self.store, self.committer, settings, ctx.clock)
        self.teardown = Teardown(
            ctx.node,
            self.committer,
            ctx.clock,
            settings.teardown_poll_seconds,
            settings.teardown_timeout_seconds,
        )
        self.server.on_refused.append(self.teardown.wake)
        self._running = False
        self.settled = 0  # CCRs settled by this process
        self._sync_batches = 0
        self.api = OcfApi(self.committer, ctx.clock, on_change=self.teardown.wake)
        metrics = ctx.metrics
        self._ccr_total = metrics.counter("ocf_ccr_total", "Credit-Control-Requests settled", ["result"])
        metrics.gauge("ocf_replayed_answers", "repeated CCRs answered from the store", read=lambda: self.store.replays)
        metrics.gauge("ocf_expired_sessions", "sessions released after Tcc", read=lambda: self.sweeper.expired_total)
        metrics.gauge("ocf_db_transactions", "transactions of the OCF's CCR writers", read=lambda: self.transactions)
        self.state = Sampled(metrics, "ocf_state")
        self.state.gauge("ocf_open_sessions", "credit-control sessions open (ECUR and SCUR)")
        self.state.gauge("ocf_reserved_money", "money held by the reservations of open sessions, in minor units")
        self.state.gauge("ocf_pending_actions", "sessions waiting for an ASR or RAR to be sent", ["action"])
        self._sampling = Periodic(
            "ocf-state", ctx.settings.http.metrics_sample_seconds, self.sample_state, first_at_once=True
        )

    async def sample_state(self) -> None:
        """Count what /metrics shows of the database's state, through the writer thread."""
        opened, held, pending = await self.committer.run(open_session_state)
        self.state.update(
            self.clock.now(),
            {
                "ocf_open_sessions": opened,
                "ocf_reserved_money": held,
                "ocf_pending_actions": [((action,), float(pending.get(action, 0))) for action in (ABORT, REAUTH)],
            },
        )

    def _settle(self, conn: Connection, requests: list[CreditRequest]) -> list[Outcome]:
        outcomes = self.store.settle_batch(conn, requests, self.clock.now())
        self._count(outcomes)
        self._sync_batches += 1
        return outcomes

    def _settle_pg(self, settler: pg.PgSettler) -> Settle[CreditRequest, Outcome]:
        async def settle(requests: list[CreditRequest]) -> list[Outcome]:
            outcomes = await settler.settle(requests, self.clock.now())
            self._count(outcomes)
            return outcomes

        return settle

    def _count(self, outcomes: list[Outcome]) -> None:
        self.settled += len(outcomes)
        counter = self._ccr_total
        for code, count in Counter(outcome.result_code for outcome in outcomes).items():
            counter.inc(str(code), amount=count)

    @property
    def transactions(self) -> int:
        """Transactions that settled CCRs (committed)."""
        if self.settlers:
            return sum(s.transactions for s in self.settlers)
        return self._sync_batches

    @property
    def batches(self) -> int:
        """Batches of CCRs tried (a failed batch is settled again request by request)."""
        if self.settlers:
            return sum(s.batches for s in self.settlers)
        return self._sync_batches

    async def start(self) -> None:
        self._running = True
        self.committer.start()
        self.sweeper.start()
        self.teardown.start()
        self._sampling.start()

    async def stop(self) -> None:
        self._running = False
        await self._sampling.stop()
        await self.sweeper.stop()
        await self.teardown.stop()
        await self.batcher.drain()
        for settler in self.settlers:
            await settler.close()
        await asyncio.to_thread(self.committer.stop)

    def add_routes(self, app: web.Application, spec: OpenApi) -> None:
        self.api.add_routes(app, spec)

    def ready(self) -> bool:
        """Ready while the writer runs and the latest batch did not find the database out of reach."""
        return self._running and not isinstance(self.batcher.last_error, DatabaseUnavailable)


def create_service(ctx: ServiceContext) -> OcfService:
    return OcfService(ctx)
