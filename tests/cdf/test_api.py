"""The CDF's HTTP API (aiohttp, bearer tokens) and its command line, over a database the Rf server filled."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cdf.acr import Acr
from cdf.assembly import Assembler, AssemblyConfig
from cdf.cli import add_commands
from cdf.store import CdfStore
from charging.cli import CommandError
from charging.db import make_engine, migrate
from charging.web import ApiAuth, OpenApi, make_app, serve_openapi
from tests.cdf.acrs import ICID, T0, acr
from tests.cdf.harness import ims_node, running_cdf, send_acr
from tests.conftest import Database

READ_TOKEN = "read-token"


async def test_api_serves_the_correlated_view_cdrs_and_the_backlog(database: Database) -> None:
    async with running_cdf(database.engine) as cdf:
        async with ims_node(cdf.port, "pcscf.test") as pcscf:
            for number, kind in enumerate(["START", "INTERIM", "STOP"]):
                await send_acr(
                    pcscf,
                    session_id="pcscf.test;1;1",
                    record_type=kind,
                    record_number=number,
                    node_functionality="P_CSCF",
                    icid=ICID,
                )
            await send_acr(pcscf, session_id="pcscf.test;1;2", record_type="START", record_number=0, icid="other")
        app = make_app(ApiAuth({READ_TOKEN: "read"}))
        spec = OpenApi()
        cdf.service.add_routes(app, spec)
        serve_openapi(app, spec)
        async with TestClient(TestServer(app)) as client:
            auth = {"Authorization": f"Bearer {READ_TOKEN}"}
            assert (await client.get(f"/cdf/correlation/{ICID}")).status == 401
            view = await (await client.get(f"/cdf/correlation/{ICID}", headers=auth)).json()
            assert [leg["node_address"] for leg in view["legs"]] == ["pcscf.test"]
            assert [g["kind"] for g in view["gaps"]] == ["no_terminating_leg"]
            assert view["total_duration_seconds"] == 0
            missing = await client.get("/cdf/correlation/nothing-here", headers=auth)
            assert missing.status == 404 and (await missing.json())["error"] == "unknown ICID"
            page = await (await client.get(f"/cdf/cdrs?icid={ICID}&limit=1", headers=auth)).json()
            assert len(page["cdrs"]) == 1 and page["next_after"] is not None
            rest = await (await client.get(f"/cdf/cdrs?icid={ICID}&after={page['next_after']}", headers=auth)).json()
            assert [c["record_sequence_number"] for c in page["cdrs"] + rest["cdrs"]] == [1, 2]
            one = await (await client.get(f"/cdf/cdrs/{rest['cdrs'][0]['cdr_id']}", headers=auth)).json()
            assert one == rest["cdrs"][0]
            assert (await client.get("/cdf/cdrs?limit=0", headers=auth)).status == 400
            backlog = await (await client.get("/cdf/outbox", headers=auth)).json()
            assert backlog["unpublished"] == 2 and backlog["open_records"] == 1 and backlog["publisher"] is None
            document = await (await client.get("/openapi.json")).json()
            assert (
                "/cdf/correlation/{icid}" in document["paths"] and "CorrelatedView" in document["components"]["schemas"]
            )


def fill(url: str, acrs: list[Acr]) -> None:
    engine = make_engine(url)
    migrate(engine)
    store = CdfStore(Assembler(AssemblyConfig()), "cdf-cli")
    with engine.begin() as conn:
        store.write_acrs(conn, acrs)
    engine.dispose()


def run_cli(config: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="charging")
    parser.add_argument("-c", "--config")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["-c", str(config), *argv])
    status: int = args.func(args)
    return status


def test_cli_prints_correlation_cdrs_and_backlog(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cdf.db'}"
    config = tmp_path / "charging.toml"
    config.write_text(f'[database]\nurl = "{url}"\n\n[cdf]\nhome_iois = ["ims.mnc001.mcc001.3gppnetwork.org"]\n')
    fill(url, [acr("START", 0, at=T0), acr("INTERIM", 1, at=T0 + 10), acr("STOP", 2, at=T0 + 20)])
    assert run_cli(config, "cdf", "correlation", ICID) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["complete"] is True and view["total_duration_seconds"] == 20
    assert run_cli(config, "cdf", "cdrs", "--icid", ICID) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["record_sequence_number"] for line in lines] == [1, 2]
    assert run_cli(config, "cdf", "cdr", json.loads(lines[0])["cdr_id"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(lines[0])
    assert run_cli(config, "cdf", "outbox") == 0
    assert json.loads(capsys.readouterr().out)["unpublished"] == 2
    with pytest.raises(CommandError, match="no CDR and no open record"):
        run_cli(config, "cdf", "correlation", "unknown-icid")
