"""The billing REST API over HTTP: tokens, accounts, tariffs, CDR search with pagination, usage, invoices,
exports, errors that name the field, and the OpenAPI document.

Real parts: aiohttp server and client over TCP, SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from billing.api import BillingApi
from billing.feed import FeedHub
from billing.invoicing import run_cycles
from billing.settings import BillingSettings, TaxSetting
from charging.clock import ManualClock
from charging.web import ApiAuth, OpenApi, make_app, serve_openapi
from tests.billing.conftest import Books, make_books
from tests.billing.factories import make_cdr, voice_plan
from tests.conftest import Database

READ = {"Authorization": "Bearer reader-token"}
ADMIN = {"Authorization": "Bearer admin-token"}
MARCH = datetime(2026, 3, 2, 21, tzinfo=UTC)


@pytest.fixture
async def api(database: Database) -> AsyncIterator[tuple[TestClient, Books]]:  # type: ignore[type-arg]
    books = make_books(database.engine)
    app = make_app(ApiAuth({"reader-token": "read", "admin-token": "admin"}))
    spec = OpenApi()
    settings = BillingSettings(default_taxes=[TaxSetting(name="VAT", basis_points=1000)])
    BillingApi(database.engine, settings, ManualClock(), FeedHub()).add_routes(app, spec)
    serve_openapi(app, spec)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, books
    finally:
        await client.close()


async def _json(response: Any, status: int) -> Any:
    body = await response.json()
    assert response.status == status, body
    return body


async def test_reads_need_a_token_and_writes_need_an_admin_token(api: tuple[TestClient, Books]) -> None:  # type: ignore[type-arg]
    client, _ = api
    assert (await client.get("/billing/accounts")).status == 401
    assert (await client.get("/billing/accounts", headers={"Authorization": "Bearer wrong"})).status == 401
    await _json(await client.get("/billing/accounts", headers=READ), 200)
    refused = await client.post("/billing/accounts", json={"name": "bob"}, headers=READ)
    assert refused.status == 403
    created = await _json(await client.post("/billing/accounts", json={"name": "bob"}, headers=ADMIN), 201)
    assert created["taxes"] == [{"name": "VAT", "basis_points": 1000}]  # the configured default


async def test_account_creation_errors_name_the_field(api: tuple[TestClient, Books]) -> None:  # type: ignore[type-arg]
    client, _ = api
    bad = await _json(
        await client.post("/billing/accounts", json={"name": "x", "cycle_kind": "yearly"}, headers=ADMIN), 422
    )
    assert [d["field"] for d in bad["detail"]] == ["cycle_kind"]
    day = await _json(await client.post("/billing/accounts", json={"name": "x", "cycle_day": 40}, headers=ADMIN), 400)
    assert "day from 1 to 31" in day["error"]
    duplicate = await _json(await client.post("/billing/accounts", json={"name": "alice"}, headers=ADMIN), 409)
    assert "exists" in duplicate["error"]
    broken = await client.post("/billing/accounts", data=b"{nope", headers=ADMIN)
    assert broken.status == 400
    taken = await client.post(
        "/billing/accounts", json={"name": "mallory", "subscribers": ["sip:alice@home.net"]}, headers=ADMIN
    )
    assert taken.status == 409


async def test_subscribers_and_tariff_versions_through_the_api(api: tuple[TestClient, Books]) -> None:  # type: ignore[type-arg]
    client, books = api
    path = f"/billing/accounts/{books.account.id}/subscribers"
    added = await _json(await client.post(path, json={"identity": "sip:Carol@HOME.net"}, headers=ADMIN), 201)
    assert added["identity"] == "sip:Carol@home.net"
    account = await _json(await client.get(f"/billing/accounts/{books.account.id}", headers=READ), 200)
    assert "sip:Carol@home.net" in account["subscribers"]
    assert (await client.get("/billing/accounts/999", headers=READ)).status == 404
    missing = await client.post("/billing/accounts/999/subscribers", json={"identity": "sip:x@y.z"}, headers=ADMIN)
    assert missing.status == 404
    not_a_uri = await _json(await client.post(path, json={"identity": "alice-at-home"}, headers=ADMIN), 400)
    assert "not a sip:, sips: or tel: URI" in not_a_uri["error"]

    body = {"effective_from": "2026-02-01T00:00:00Z", "note": "spring", "plan": voice_plan().model_dump(mode="json")}
    stored = await _json(await client.put("/billing/tariffs/standard", json=body, headers=ADMIN), 201)
    assert stored == {"plan": "standard", "version": 2}
    body["plan"]["currency"] = "EURO"
    invalid = await _json(await client.put("/billing/tariffs/standard", json=body, headers=ADMIN), 422)
    assert invalid["detail"][0]["field"] == "plan.currency"
    versions = await _json(await client.get("/billing/tariffs/standard", headers=READ), 200)
    assert [v["version"] for v in versions["versions"]] == [1, 2]


async def test_cdr_search_filters_and_paginates_with_a_cursor(api: tuple[TestClient, Books]) -> None:  # type: ignore[type-arg]
    client, books = api
    cdrs = [
        make_cdr(start=MARCH + timedelta(hours=i), node="scscf1.home.net" if i % 2 else "scscf2.home.net")
        for i in range(7)
    ]
    books.store(cdrs)
    seen: list[str] = []
    cursor = None
    while True:
        query = {"account": str(books.account.id), "limit": "3", **({"cursor": cursor} if cursor else {})}
        page = await _json(await client.get("/billing/cdrs", params=query, headers=READ), 200)
        seen += [item["cdr_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(c.cdr_id for c in cdrs) and len(seen) == 7
    by_node = await _json(await client.get("/billing/cdrs", params={"node": "scscf1.home.net"}, headers=READ), 200)
    assert len(by_node["items"]) == 3
    window = {"from": (MARCH + timedelta(hours=2)).isoformat(), "to": (MARCH + timedelta(hours=4)).isoformat()}
    assert len((await _json(await client.get("/billing/cdrs", params=window, headers=READ), 200))["items"]) == 2
    by_icid = await _json(
        await client.get("/billing/cdrs", params={"icid": cdrs[0].ims_charging_identifier}, headers=READ), 200
    )
    assert [i["cdr_id"] for i in by_icid["items"]] == [cdrs[0].cdr_id]
    one = await _json(await client.get(f"/billing/cdrs/{cdrs[0].cdr_id}", headers=READ), 200)
    assert {c["component"] for c in one["charges"]} == {"usage", "setup"}
    bad = await _json(await client.get("/billing/cdrs", params={"from": "yesterday"}, headers=READ), 400)
    assert "from" in bad["error"]
    naive = await _json(await client.get("/billing/cdrs", params={"to": "2026-03-01T00:00:00"}, headers=READ), 400)
    assert "time zone" in naive["error"]
    assert (await client.get("/billing/cdrs", params={"limit": "0"}, headers=READ)).status == 400


async def test_usage_per_day_and_invoices_with_exports(api: tuple[TestClient, Books]) -> None:  # type: ignore[type-arg]
    client, books = api
    books.store([make_cdr(start=MARCH, duration=60), make_cdr(start=MARCH + timedelta(days=1), duration=120)])
    usage = await _json(await client.get(f"/billing/accounts/{books.account.id}/usage", headers=READ), 200)
    assert [(d["day"], d["service"], d["amount_minor"]) for d in usage["days"]] == [
        ("2026-03-02", "voice", 11),
        ("2026-03-03", "voice", 17),
    ]
    assert usage["totals"]["voice"]["amount_minor"] == 28
    only = await _json(
        await client.get(f"/billing/accounts/{books.account.id}/usage", params={"from": "2026-03-03"}, headers=READ),
        200,
    )
    assert len(only["days"]) == 1

    with books.engine.begin() as conn:
        run_cycles(conn, now=datetime(2026, 4, 1, tzinfo=UTC), prefix="INV-")
    invoices = await _json(await client.get("/billing/invoices", params={"status": "closed"}, headers=READ), 200)
    march = next(i for i in invoices["items"] if i["period_start"].startswith("2026-03"))
    assert (march["number"], march["total_minor"]) == ("INV-00000003", 28 + 5)  # 19 % VAT of 28 = 5.32
    exported = await client.get(f"/billing/invoices/{march['id']}/export", params={"format": "csv"}, headers=READ)
    assert exported.status == 200 and exported.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await exported.text())))
    assert rows[-1]["kind"] == "total" and rows[-1]["amount_minor"] == "33"
    as_json = await _json(await client.get(f"/billing/invoices/{march['id']}/export", headers=READ), 200)
    assert as_json["lines"][0]["amount_minor"] == 28
    assert (
        await client.get(f"/billing/invoices/{march['id']}/export", params={"format": "pdf"}, headers=READ)
    ).status == 400


async def test_openapi_document_lists_the_billing_paths(api: tuple[TestClient, Books]) -> None:  # type: ignore[type-arg]
    client, _ = api
    document = await _json(await client.get("/openapi.json"), 200)
    assert {"/billing/accounts", "/billing/cdrs", "/billing/invoices/{id}/export", "/billing/feed"} <= set(
        document["paths"]
    )
    assert "AccountSpec" in document["components"]["schemas"]
    assert document["paths"]["/billing/cdrs"]["get"]["parameters"][0]["name"] == "limit"
