"""The OCF as a ``charging serve`` role: Ro handlers on the node, sweeper, ASR/RAR sender, provisioning API."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from sqlalchemy import Connection

from charging.db import DatabaseUnavailable, GroupCommitter
from charging.service import ServiceContext
from charging.web import OpenApi
from ocf import pg
from ocf.api import OcfApi
from ocf.control import CreditControl, CreditRequest
from ocf.expiry import Sweeper
from ocf.server import AnswerEncoder, OcfServer
from ocf.store import Batcher, CreditStore, Outcome, Settle, committed
from ocf.teardown import Teardown

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
        for outcome in outcomes:
            counter.inc(str(outcome.result_code))

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

    async def stop(self) -> None:
        self._running = False
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
