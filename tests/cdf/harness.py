"""A CDF service on a real DiameterNode and database, and IMS nodes that send it ACRs over TCP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select

from bench.messages import ims_acr
from cdf.models import acr_log, outbox
from cdf.queries import list_cdrs
from cdf.service import CdfService, create_service
from cdf.settings import CdfSettings
from charging.cdr import Cdr
from charging.clock import Clock, ManualClock
from charging.config import KafkaSettings, Settings
from charging.diameter import Message
from charging.diameter.node import DiameterNode
from charging.metrics import Registry
from charging.service import ServiceContext
from tests.support.diameter import client_node, server_node, wait_available

CDF_HOST = "cdf.test"


@dataclass
class RunningCdf:
    node: DiameterNode
    service: CdfService
    ctx: ServiceContext

    @property
    def port(self) -> int:
        return self.node.port

    @property
    def engine(self) -> Engine:
        return self.ctx.engine

    def cdrs(self) -> list[Cdr]:
        with self.engine.connect() as conn:
            return [cdr for _, cdr in list_cdrs(conn, limit=100_000)]

    def count(self, table: Any) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

    def acr_log_rows(self) -> int:
        return self.count(acr_log)

    def outbox_rows(self) -> int:
        return self.count(outbox)


@contextlib.asynccontextmanager
async def running_cdf(
    engine: Engine,
    *,
    clock: Clock | None = None,
    bootstrap: str | None = None,
    topic: str = "charging.cdrs",
    node_id: str = "cdf-1",
    host: str = CDF_HOST,
    **cdf_settings: Any,
) -> AsyncIterator[RunningCdf]:
    node = server_node(host)
    settings = Settings(
        roles=["cdf"],
        node_id=node_id,
        cdf=CdfSettings(**cdf_settings),
        kafka=KafkaSettings(bootstrap=bootstrap, cdr_topic=topic, partitions=4),
    )
    ctx = ServiceContext(
        settings=settings,
        engine=engine,
        node=node,
        kafka_bootstrap=bootstrap,
        clock=clock or ManualClock(),
        metrics=Registry(),
        node_id=node_id,
    )
    service = create_service(ctx)
    await node.start()
    await service.start()
    try:
        yield RunningCdf(node, service, ctx)
    finally:
        await service.stop()
        await node.stop()


@contextlib.asynccontextmanager
async def ims_node(port: int, host: str, cdf_host: str = CDF_HOST) -> AsyncIterator[DiameterNode]:
    """An IMS node (P-CSCF, S-CSCF, AS, ...) connected to the CDF as an accounting client."""
    node = client_node(port, host=host, server_host=cdf_host, auth_apps=frozenset(), acct_apps=frozenset({3}))
    await node.start()
    try:
        await wait_available(node, cdf_host)
        yield node
    finally:
        await node.stop()


async def send_acr(node: DiameterNode, cdf_host: str = CDF_HOST, **fields: Any) -> Message:
    """Send one ACR from ``node`` (origin host filled in) and return the ACA."""
    fields.setdefault("origin_host", node.identity.origin_host)
    return await node.request(ims_acr(**fields), peer=cdf_host)
