"""The provisioning REST API (aiohttp, real HTTP) with its OpenAPI document, and the ``charging ocf`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from charging.cli import main
from charging.web import ApiAuth, OpenApi, make_app, serve_openapi
from tests.ocf.conftest import Ocf, mscc

ADMIN = {"Authorization": "Bearer admin-token"}
READER = {"Authorization": "Bearer read-token"}


@pytest.fixture
async def api(ocf: Ocf):
    app = make_app(ApiAuth({"admin-token": "admin", "read-token": "read"}))
    spec = OpenApi()
    ocf.service.add_routes(app, spec)
    serve_openapi(app, spec)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def test_provisioning_over_http_lets_a_subscriber_be_charged(ocf: Ocf, api: TestClient) -> None:
    resp = await api.post("/ocf/accounts", json={"name": "alice", "balance": 500}, headers=ADMIN)
    assert resp.status == 201
    account = await resp.json()
    resp = await api.post(
        "/ocf/subscribers",
        json={"account": "alice", "subscription_ids": [{"type": "END_USER_E164", "data": "34600000001"}]},
        headers=ADMIN,
    )
    assert resp.status == 201
    resp = await api.post(
        "/ocf/tariffs",
        json={"name": "voice", "unit": "time", "price": 1, "rating_group": 100, "effective_from": 0},
        headers=ADMIN,
    )
    assert resp.status == 201
    sid = ocf.new_session()
    cca = await ocf.send(ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    assert cca["Result-Code"] == 2001
    reservations = await (await api.get("/ocf/reservations", params={"account": "alice"}, headers=READER)).json()
    assert [(r["session_id"], r["granted"], r["money"]) for r in reservations] == [(sid, 60, 60)]
    sessions = await (await api.get("/ocf/sessions", headers=READER)).json()
    assert [s["session_id"] for s in sessions] == [sid]
    resp = await api.post(f"/ocf/accounts/{account['id']}/topup", json={"amount": 250}, headers=ADMIN)
    assert (await resp.json())["balance"] == 750
    history = await (await api.get("/ocf/accounts/alice/history", headers=READER)).json()
    assert [h["kind"] for h in history] == ["topup", "topup"]
    shown = await (await api.get("/ocf/accounts/alice", headers=READER)).json()
    assert (shown["reserved"], shown["available"], shown["open_sessions"]) == (60, 690, [sid])
    resp = await api.post("/ocf/accounts/alice/block", headers=ADMIN)
    assert (await resp.json())["blocked"] is True


async def test_api_errors_are_clear_4xx(ocf: Ocf, api: TestClient) -> None:
    resp = await api.post("/ocf/accounts", json={"name": "bob", "balance": -5}, headers=ADMIN)
    assert resp.status == 422
    assert (await resp.json())["detail"][0]["field"] == "balance"
    await api.post("/ocf/accounts", json={"name": "bob"}, headers=ADMIN)
    resp = await api.post("/ocf/accounts", json={"name": "bob"}, headers=ADMIN)
    assert resp.status == 409
    resp = await api.get("/ocf/accounts/nobody", headers=READER)
    assert resp.status == 404
    resp = await api.post("/ocf/accounts/bob/topup", json={"amount": 5}, headers=READER)
    assert resp.status == 403
    resp = await api.post(
        "/ocf/tariffs", json={"name": "x", "unit": "time", "price": 1, "band_start_minute": 5}, headers=ADMIN
    )
    assert resp.status == 422


async def test_openapi_document_describes_the_ocf_paths(ocf: Ocf, api: TestClient) -> None:
    document = await (await api.get("/openapi.json")).json()
    assert "post" in document["paths"]["/ocf/accounts"]
    assert "/ocf/accounts/{ref}/topup" in document["paths"]
    assert "TariffIn" in document["components"]["schemas"]


def test_cli_provisions_accounts_subscribers_and_tariffs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHARGING_DATABASE__URL", f"sqlite:///{tmp_path / 'cli.db'}")

    def run(*argv: str) -> object:
        assert main(["ocf", *argv]) == 0
        return json.loads(capsys.readouterr().out)

    assert run("account", "create", "carol", "--balance", "100")["balance"] == 100
    assert run("subscriber", "add", "carol", "--e164", "34600000009")["subscription_ids"][0]["data"] == "34600000009"
    assert run("tariff", "set", "voice", "--unit", "time", "--price", "2", "--increment", "60")["increment"] == 60
    assert run("account", "topup", "carol", "50")["balance"] == 150
    assert run("account", "block", "carol")["blocked"] is True
    assert run("account", "unblock", "carol")["blocked"] is False
    assert [h["amount"] for h in run("account", "history", "carol")] == [50, 100]
    assert len(run("tariff", "list")) == 1
    assert run("sessions", "list") == []
    assert run("reservations", "list") == []
    assert main(["ocf", "account", "show", "nobody"]) == 2
    assert "no account nobody" in capsys.readouterr().err
