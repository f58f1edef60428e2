"""The OCF as a ``charging serve`` role: Ro handlers on the node, sweeper, ASR/RAR sender, provisioning API."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from sqlalchemy import Connection

from charging.db import DatabaseUnavailable, GroupCommitter
from charging.service import ServiceContext
from charging.web import OpenApi
from ocf.api import OcfApi
from ocf.control import CreditControl, CreditRequest
from ocf.expiry import Sweeper
from ocf.server import AnswerEncoder, OcfServer
from ocf.store import Batcher, CreditStore, Outcome
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
        # Provisioning, sweeps and ASR/RAR bookkeeping go through one writer; CCR batches through
        # ``writers`` more on PostgreSQL, whose transactions overlap (SQLite serialises writers anyway).
        self.committer = GroupCommitter(ctx.engine, name="ocf-writer")
        if ctx.engine.dialect.name == "postgresql" and settings.writers > 1:
            self.ccr_committers = [GroupCommitter(ctx.engine, name=f"ocf-ccr-{i}") for i in range(settings.writers)]
        else:
            self.ccr_committers = [self.committer]
        identity = ctx.node.config.identity
        self.control = CreditControl(settings)
        self.store = CreditStore(self.control, AnswerEncoder(settings, identity.origin_host, identity.origin_realm))
        self.batcher: Batcher[CreditRequest, Outcome] = Batcher(self.ccr_committers, self._settle, settings.max_batch)
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
        self.api = OcfApi(self.committer, ctx.clock, on_change=self.teardown.wake)
        metrics = ctx.metrics
        self._ccr_total = metrics.counter("ocf_ccr_total", "Credit-Control-Requests settled", ["result"])
        metrics.gauge("ocf_replayed_answers", "repeated CCRs answered from the store", read=lambda: self.store.replays)
        metrics.gauge("ocf_expired_sessions", "sessions released after Tcc", read=lambda: self.sweeper.expired_total)
        metrics.gauge("ocf_db_transactions", "transactions of the OCF's CCR writers", read=lambda: self.transactions)

    def _settle(self, conn: Connection, requests: list[CreditRequest]) -> list[Outcome]:
        outcomes = self.store.settle_batch(conn, requests, self.clock.now())
        self.settled += len(outcomes)
        for outcome in outcomes:
            self._ccr_total.inc(str(outcome.result_code))
        return outcomes

    @property
    def transactions(self) -> int:
        return sum(c.batches for c in self.ccr_committers)

    @property
    def batches(self) -> int:
        return sum(c.units for c in self.ccr_committers)

    async def start(self) -> None:
        self._running = True
        self.committer.start()
        for committer in self.ccr_committers:
            committer.start()
        self.sweeper.start()
        self.teardown.start()

    async def stop(self) -> None:
        self._running = False
        await self.sweeper.stop()
        await self.teardown.stop()
        for committer in {id(c): c for c in [*self.ccr_committers, self.committer]}.values():
            await asyncio.to_thread(committer.stop)

    def add_routes(self, app: web.Application, spec: OpenApi) -> None:
        self.api.add_routes(app, spec)

    def ready(self) -> bool:
        """Ready while the writer runs and the latest batch did not find the database out of reach."""
        return self._running and not isinstance(self.batcher.last_error, DatabaseUnavailable)


def create_service(ctx: ServiceContext) -> OcfService:
    return OcfService(ctx)
