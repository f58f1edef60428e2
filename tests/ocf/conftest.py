"""An OCF on a real database behind a real Diameter node, and a client node connected to it over TCP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Engine, select

from charging.clock import ManualClock
from charging.config import Settings
from charging.diameter import Message
from charging.diameter.node import DiameterNode
from charging.service import ServiceContext
from ocf import models as m
from ocf import provisioning as p
from ocf.service import OcfService, create_service
from ocf.settings import OcfSettings
from tests.conftest import Database
from tests.support.diameter import client_node, server_node, wait_available

OCF_HOST = "ocf.test"
CLIENT_HOST = "as.test"
CONTEXT = "mnc001.mcc001.18.32260@3gpp.org"  # TS 32.299 form: [ext.]MNC.MCC.release.service@domain
MSISDN = "34600000001"
EUR = 978


def short_settings(**overrides: Any) -> OcfSettings:
    values: dict[str, Any] = {
        "grant_seconds": 60,
        "validity_time_seconds": 30,
        "tcc_margin_seconds": 10,
        "sweep_interval_seconds": 3600.0,  # tests sweep by hand, with the manual clock
        "teardown_poll_seconds": 0.05,
        "teardown_timeout_seconds": 2.0,
    }
    values.update(overrides)
    return OcfSettings(**values)


def start_ocf(engine: Engine, settings: OcfSettings, clock: ManualClock, host: str = OCF_HOST) -> OcfService:
    node = server_node(host=host, realm="test")
    ctx = ServiceContext(Settings(ocf=settings), engine, node, None, clock=clock)
    return create_service(ctx)


@dataclass
class Ocf:
    """The OCF under test, its clock, its database, and a client application server node."""

    service: OcfService
    client: DiameterNode
    clock: ManualClock
    database: Database
    sessions: int = 0
    numbers: dict[str, int] = field(default_factory=dict)

    @property
    def engine(self) -> Engine:
        return self.database.engine

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self.engine.begin() as conn:
            return fn(conn, *args, **kwargs)

    def account(self, balance: int, name: str = "acct", msisdn: str = MSISDN, credit_limit: int = 0) -> int:
        now = self.clock.now()
        account = self.run(p.create_account, name, EUR, now, balance, credit_limit)
        self.run(p.add_subscriber, account["id"], name, [(0, msisdn), (2, f"sip:+{msisdn}@ims.test")], now)
        return int(account["id"])

    def tariff(self, **spec: Any) -> dict[str, Any]:
        spec.setdefault("name", "voice")
        spec.setdefault("unit", "time")
        spec.setdefault("price", 1)
        spec.setdefault("effective_from", 0.0)
        return dict(self.run(p.add_tariff, p.TariffSpec(**spec), self.clock.now()))

    def balance(self, account_id: int) -> tuple[int, int]:
        with self.engine.begin() as conn:
            row = conn.execute(
                select(m.accounts.c.balance, m.accounts.c.reserved).where(m.accounts.c.id == account_id)
            ).one()
        return int(row.balance), int(row.reserved)

    def new_session(self) -> str:
        self.sessions += 1
        return f"{CLIENT_HOST};1;{self.sessions}"

    def ccr(
        self,
        session_id: str,
        request_type: str,
        number: int,
        *extra: tuple[str, Any],
        msisdn: str | None = MSISDN,
        context: str = CONTEXT,
    ) -> Message:
        avps: list[tuple[str, Any]] = [
            ("Session-Id", session_id),
            ("Origin-Host", CLIENT_HOST),
            ("Origin-Realm", "test"),
            ("Destination-Realm", "test"),
            ("Auth-Application-Id", 4),
            ("Service-Context-Id", context),
            ("CC-Request-Type", request_type),
            ("CC-Request-Number", number),
        ]
        if msisdn is not None:
            avps.append(("Subscription-Id", {"Subscription-Id-Type": "END_USER_E164", "Subscription-Id-Data": msisdn}))
        avps.extend(extra)
        return Message.request("CCR", 4, avps)

    async def send(self, msg: Message) -> Message:
        return await self.client.request(msg, peer=OCF_HOST, timeout=5.0)


def mscc(
    rating_group: int = 100, requested: dict[str, Any] | None = None, used: dict[str, Any] | None = None, **more: Any
) -> tuple[str, Any]:
    group: dict[str, Any] = {"Rating-Group": rating_group}
    if requested is not None:
        group["Requested-Service-Unit"] = requested
    if used is not None:
        group["Used-Service-Unit"] = used
    group.update(more)
    return ("Multiple-Services-Credit-Control", group)


@pytest.fixture
def settings() -> OcfSettings:
    return short_settings()


@pytest.fixture
async def ocf(database: Database, settings: OcfSettings) -> AsyncIterator[Ocf]:
    clock = ManualClock()
    service = start_ocf(database.engine, settings, clock)
    await service.node.start()
    await service.start()
    client = client_node(service.node.port, host=CLIENT_HOST, server_host=OCF_HOST)
    await client.start()
    await wait_available(client, OCF_HOST)
    try:
        yield Ocf(service, client, clock, database)
    finally:
        await client.stop()
        await service.stop()
        await service.node.stop()
