"""Fixtures of the billing tests: an account with a tariff on a migrated database."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from kafka import KafkaProducer
from sqlalchemy import Engine, func, select

from billing import models
from billing.catalog import Account, AccountSpec, PlanBook, create_account, set_tariff
from billing.ingest import BatchOutcome, Incoming, Received, parse, store_batch
from billing.rating import TariffPlan
from billing.settings import TaxSetting
from charging.broker import EmbeddedBroker, create_topic, producer_config
from charging.cdr import Cdr
from tests.billing.factories import voice_plan
from tests.conftest import Database

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Books:
    """A billing database with one account, ``alice``, on the plan ``standard``."""

    engine: Engine
    account: Account
    plan_book: PlanBook

    def store(self, cdrs: list[Cdr], now: datetime = EPOCH, *, parsed: bool = True) -> BatchOutcome:
        """Store a batch as the consumer does (each CDR parsed from its JSON into an ``Incoming``), or,
        with ``parsed=False``, as ``Received`` models (the form of callers that hold a ``Cdr``)."""
        received: list[Received | Incoming] = []
        for offset, cdr in enumerate(cdrs):
            payload = cdr.to_json()
            if parsed:
                model, usage = parse(payload)
                received.append(Incoming.of(model, usage, payload.decode(), 0, offset))
            else:
                received.append(Received(cdr, payload.decode()))
        with self.engine.begin() as conn:
            return store_batch(conn, received, [], now=now, plan_book=self.plan_book)

    def count(self, table: models.Table) -> int:  # type: ignore[name-defined]
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

    def total(self, column: object, *where: object) -> int:
        with self.engine.connect() as conn:
            query = select(func.coalesce(func.sum(column), 0))  # type: ignore[arg-type]
            for clause in where:
                query = query.where(clause)  # type: ignore[arg-type]
            return int(conn.execute(query).scalar_one())


def make_books(engine: Engine, plan: TariffPlan | None = None, **account: object) -> Books:
    spec = AccountSpec.model_validate(
        {
            "name": "alice",
            "tariff_plan": "standard",
            "cycle_kind": "monthly",
            "cycle_day": 1,
            "subscribers": ["sip:alice@home.net", "tel:+491701234567"],
            **account,
        }
    )
    with engine.begin() as conn:
        set_tariff(conn, "standard", plan or voice_plan(peak=False, time_zone="UTC"), effective_from=EPOCH, now=EPOCH)
        created = create_account(
            conn,
            spec,
            now=EPOCH,
            default_currency="EUR",
            default_time_zone="UTC",
            default_taxes=[TaxSetting(name="VAT", basis_points=1900)],
        )
    return Books(engine, created, PlanBook())


@pytest.fixture
def books(database: Database) -> Books:
    return make_books(database.engine)


# -- Kafka ----------------------------------------------------------------------------------------------

EXTERNAL_KAFKA = os.environ.get("CHARGING_TEST_KAFKA")
# tansu holds a group join back by about half the session timeout; Apache Kafka refuses less than 6 s.
SESSION_TIMEOUT_MS = 6_000 if EXTERNAL_KAFKA else 3_000


@dataclass
class Kafka:
    """A Kafka-protocol broker: the embedded tansu, or the cluster named by CHARGING_TEST_KAFKA."""

    bootstrap: str

    def new_topic(self, partitions: int = 4) -> str:
        name = f"cdrs-{uuid.uuid4().hex[:10]}"
        create_topic(self.bootstrap, name, partitions)
        return name

    def produce(self, topic: str, cdrs: list[Cdr], raw: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
        producer = KafkaProducer(**producer_config(self.bootstrap))
        try:
            for cdr in cdrs:
                producer.send(topic, key=cdr.partition_key.encode(), value=cdr.to_json())
            for key, value in raw:
                producer.send(topic, key=key, value=value)
            producer.flush(timeout=30)
        finally:
            producer.close(timeout=5)


@pytest.fixture(scope="session")
def kafka() -> Iterator[Kafka]:
    if EXTERNAL_KAFKA:
        yield Kafka(EXTERNAL_KAFKA)
        return
    with EmbeddedBroker() as broker:
        yield Kafka(broker.bootstrap)


def wait_until(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``condition`` until true; the timeout only bounds a hung test, it asserts no timing."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)
