"""The billing role for ``charging serve``: the Kafka consumer thread, the REST API and the page."""

from __future__ import annotations

import asyncio
import logging
import threading

from aiohttp import web

from billing.api import BillingApi
from billing.consumer import BillingConsumer
from billing.feed import FeedHub
from charging.service import ServiceContext
from charging.web import OpenApi

log = logging.getLogger("charging.billing")


class BillingService:
    name = "billing"

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings.billing
        self.hub = FeedHub()
        self.api = BillingApi(ctx.engine, self.settings, ctx.clock, self.hub)
        self.consumer: BillingConsumer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        ctx.metrics.gauge("billing_consumer_up", "1 while the billing consumer thread runs", read=self._up)

    def _up(self) -> float:
        return 1.0 if self._thread is not None and self._thread.is_alive() else 0.0

    async def start(self) -> None:
        if self.ctx.kafka_bootstrap is None:
            log.warning("billing: no Kafka broker configured; the API runs, no CDRs are consumed")
            return
        kafka = self.ctx.settings.kafka
        self.consumer = BillingConsumer(
            self.ctx.engine,
            bootstrap=self.ctx.kafka_bootstrap,
            topic=kafka.cdr_topic,
            dead_letter_topic=kafka.dead_letter_topic,
            settings=self.settings,
            clock=self.ctx.clock,
            metrics=self.ctx.metrics,
            name=f"{self.ctx.node_id}-billing",
            on_stored=self.hub.publish,
        )
        await asyncio.to_thread(self.consumer.open)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.consumer.run, args=(self._stop,), name="billing-consumer", daemon=True
        )
        self._thread.start()
        log.info("billing: consuming %s as group %s", kafka.cdr_topic, self.settings.consumer_group)

    async def stop(self) -> None:
        self.hub.close()
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self.consumer is not None:
            await asyncio.to_thread(self.consumer.close)
            self.consumer = None

    def add_routes(self, app: web.Application, spec: OpenApi) -> None:
        self.api.add_routes(app, spec)

    def ready(self) -> bool:
        if self.ctx.kafka_bootstrap is None:
            return True
        consumer = self.consumer
        return consumer is not None and self._up() == 1.0 and consumer.joined.is_set() and consumer.last_error is None


def create_service(ctx: ServiceContext) -> BillingService:
    return BillingService(ctx)
