"""The billing page in headless Chromium: the usage chart shows the stored usage, the invoices are listed,
and a CDR produced to Kafka during the test appears in the live feed.

Real parts: headless Chromium (DevTools protocol), the billing service (aiohttp over TCP, consumer thread),
a Kafka-protocol broker and SQLite.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from sqlalchemy import select

from billing import models
from billing.invoicing import run_cycles
from billing.service import BillingService, create_service
from billing.settings import BillingSettings
from charging.broker import free_port
from charging.clock import ManualClock
from charging.config import KafkaSettings, Settings
from charging.service import ServiceContext
from charging.web import ApiAuth, OpenApi, make_app
from tests.billing.chromium import Chromium, chromium_binary
from tests.billing.conftest import SESSION_TIMEOUT_MS, Books, Kafka, make_books
from tests.billing.factories import make_cdr
from tests.conftest import Database

pytestmark = pytest.mark.kafka
MARCH = datetime(2026, 3, 2, 21, tzinfo=UTC)


@pytest.fixture
async def browser() -> AsyncIterator[Chromium]:
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: CI must run scripts/bootstrap.sh --system", pytrace=False)
        pytest.skip("chromium is not installed (scripts/bootstrap.sh --system)")
    chromium = Chromium(binary)
    await chromium.start()
    try:
        yield chromium
    finally:
        await chromium.close()


async def _serve(books: Books, kafka: Kafka, topic: str) -> tuple[BillingService, web.AppRunner, int]:
    settings = Settings(
        kafka=KafkaSettings(bootstrap=kafka.bootstrap, cdr_topic=topic, dead_letter_topic=f"{topic}.dead"),
        billing=BillingSettings(
            consumer_group=f"page-{uuid.uuid4().hex[:8]}", poll_timeout_ms=100, session_timeout_ms=SESSION_TIMEOUT_MS
        ),
    )
    ctx = ServiceContext(
        settings, books.engine, None, kafka.bootstrap, clock=ManualClock(MARCH.timestamp() + 86_400 * 40)
    )
    service = create_service(ctx)
    app = make_app(ApiAuth({"page-reader": "read"}))
    service.add_routes(app, OpenApi())
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await service.start()
    return service, runner, port


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_page_shows_usage_chart_invoices_and_live_cdrs(
    database: Database, kafka: Kafka, browser: Chromium, tmp_path: Path
) -> None:
    books = make_books(database.engine)
    books.store([make_cdr(start=datetime(2026, 2, 20, 21, tzinfo=UTC), duration=300)])
    with books.engine.begin() as conn:
        run_cycles(conn, now=datetime(2026, 3, 1, tzinfo=UTC), prefix="INV-")
    books.store(
        [make_cdr(start=MARCH + timedelta(days=d), duration=60 * (d + 1)) for d in range(5) for _ in range(d % 3 + 1)]
    )
    with books.engine.connect() as conn:
        usage = conn.execute(select(models.usage_daily.c.day, models.usage_daily.c.amount_minor)).all()
    topic = kafka.new_topic(partitions=2)
    service, runner, port = await _serve(books, kafka, topic)
    try:
        await browser.open(f"http://127.0.0.1:{port}/ui/billing?account={books.account.id}#token=page-reader")
        await browser.wait_for("document.body.dataset.loaded === 'true'", "the account loaded")

        bars = await browser.evaluate(
            "JSON.stringify([...document.querySelectorAll('#chart rect.bar')]"
            ".map(b => [b.dataset.day, b.dataset.service, Number(b.dataset.amount)]))"
        )
        assert sorted(json.loads(bars)) == sorted([d.isoformat(), "voice", a] for d, a in usage)
        heights = await browser.evaluate(
            "[...document.querySelectorAll('#chart rect.bar')].map(b => +b.getAttribute('height'))"
        )
        assert min(heights) > 0

        rows = "[...document.querySelectorAll('#invoices tr.invoice')].map(r => [...r.cells].map(c => c.textContent))"
        shown = {row[0]: row for row in await browser.evaluate(rows)}
        assert shown["INV-00000002"][2] == "closed"  # February, with the call of 20 February
        assert shown["(open)"][2] == "open"  # March, still running
        february_total = shown["INV-00000002"][3]
        assert february_total == "0.42 EUR"  # 5 minutes at 0.06 + 0.05 set-up = 0.35, and 19 % VAT

        await browser.wait_for(
            "document.getElementById('feed-state').textContent === 'live'", "the live feed connected"
        )
        await asyncio.to_thread(service.consumer.joined.wait, 60)  # type: ignore[union-attr]
        live = make_cdr(start=MARCH + timedelta(days=6), duration=125, called="tel:+4989777000")
        await asyncio.to_thread(kafka.produce, topic, [live])
        row = await browser.wait_for(
            f"document.querySelector('#feed tr[data-cdr-id=\"{live.cdr_id}\"]')?.textContent",
            "the produced CDR in the feed",
        )
        assert "tel:+4989777000" in row and "sip:alice@home.net" in row
        await browser.wait_for(
            f"document.querySelector('#chart rect.bar[data-day=\"{(MARCH + timedelta(days=6)).date()}\"]') !== null",
            "the new day in the chart",
        )
        shot = await browser.screenshot(tmp_path / "billing-page.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        await service.stop()
        await runner.cleanup()
