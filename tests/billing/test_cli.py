"""``charging billing ...`` end to end on a SQLite file: tariffs, accounts, cycle run, invoice export, rerate,
dead letters, and one clear line with exit status 2 for each mistake a user can make.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from billing.catalog import PlanBook
from billing.ingest import Received, store_batch
from charging.cli import main
from charging.db import make_engine
from tests.billing.factories import make_cdr, voice_plan

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'billing.db'}"
    monkeypatch.setenv("CHARGING_DATABASE__URL", url)
    monkeypatch.delenv("CHARGING_CONFIG", raising=False)
    return url


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["billing", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_tariff_account_cycle_invoice_and_rerate_from_the_command_line(
    cli_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(voice_plan(peak=False, time_zone="UTC").model_dump_json())
    assert _run(capsys, "tariff", "set", "standard", str(plan_file), "--effective-from", "2026-01-01T00:00:00Z")[0] == 0
    status, out, _ = _run(
        capsys,
        "account",
        "add",
        "alice",
        "--plan",
        "standard",
        "--subscriber",
        "sip:alice@home.net",
        "--tax",
        "VAT:1900",
    )
    assert status == 0 and "account alice created" in out
    shown = json.loads(_run(capsys, "account", "show", "alice")[1])
    assert shown["subscribers"] == ["sip:alice@home.net"] and shown["taxes"][0]["basis_points"] == 1900

    engine = make_engine(cli_db)
    march_call = make_cdr(start=datetime(2026, 3, 5, 10, tzinfo=UTC), duration=120)
    with engine.begin() as conn:
        store_batch(
            conn, [Received(march_call, march_call.to_json().decode())], [], now=datetime.now(UTC), plan_book=PlanBook()
        )

    status, out, _ = _run(capsys, "cycle", "run", "--now", "2026-04-01T00:00:00Z")
    assert status == 0 and "invoices closed" in out
    march_line = next(line for line in out.splitlines() if "2026-03-01" in line)
    number = march_line.split()[0]
    assert march_line.endswith("0.20 EUR")  # 2 minutes at 0.06 + 0.05 set-up = 0.17, VAT 0.03
    assert number in _run(capsys, "invoice", "list", "--status", "closed")[1]
    export = tmp_path / "march.csv"
    assert _run(capsys, "invoice", "export", number, "--format", "csv", "--output", str(export))[0] == 0
    assert export.read_text().splitlines()[-1].split(",")[-2:] == ["20", "EUR"]

    corrected = voice_plan(peak=False, time_zone="UTC").model_dump(mode="json")
    corrected["services"][0]["prices"]["offpeak"] = "7"
    plan_file.write_text(json.dumps(corrected))
    _run(capsys, "tariff", "set", "standard", str(plan_file), "--effective-from", "2026-01-01T00:00:00Z")
    status, out, _ = _run(capsys, "rerate", "--from", "2026-03-01T00:00:00Z", "--to", "2026-04-01T00:00:00Z")
    assert status == 0 and "1 CDRs change, difference +2 minor units" in out and "--apply" in out
    status, out, _ = _run(capsys, "rerate", "--from", "2026-03-01T00:00:00Z", "--to", "2026-04-01T00:00:00Z", "--apply")
    assert status == 0 and out.rstrip().endswith("applied")
    status, out, _ = _run(capsys, "rerate", "--from", "2026-03-01T00:00:00Z", "--to", "2026-04-01T00:00:00Z")
    assert "0 CDRs change" in out
    assert "0 dead letters shown" in _run(capsys, "dead-letters", "list")[1]


def test_mistakes_get_one_clear_line_and_exit_status_2(
    cli_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_plan = tmp_path / "bad.json"
    bad_plan.write_text(json.dumps({"currency": "EUR", "services": [{"service": "voice", "prices": {"peak": "1"}}]}))
    cases = [
        (("tariff", "set", "standard", str(bad_plan)), "no price for band 'standard'"),
        (("tariff", "set", "standard", str(tmp_path / "missing.json")), "no such file"),
        (("account", "show", "nobody"), "no account 'nobody'"),
        (("account", "add", "bob", "--tax", "VAT"), "NAME:BASIS_POINTS"),
        (("account", "add", "bob", "--cycle", "weekly", "--cycle-day", "9"), "weekday"),
        (("rerate", "--from", "yesterday", "--to", "2026-01-01T00:00:00Z"), "--from 'yesterday'"),
        (("rerate", "--from", "2026-02-01T00:00:00", "--to", "2026-03-01T00:00:00Z"), "time zone"),
        (("invoice", "show", "INV-404"), "no invoice 'INV-404'"),
    ]
    for argv, message in cases:
        status, _, err = _run(capsys, *argv)
        assert status == 2, argv
        assert len(err.strip().splitlines()) == 1 and message in err, (argv, err)


def test_the_charging_command_exposes_the_billing_commands(cli_db: str) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "charging"), "billing", "account", "show", "ghost"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "charging: no account 'ghost'"
