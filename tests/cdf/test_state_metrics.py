"""What /metrics shows of the CDF's state in the database: open records and each sink's backlog."""

from __future__ import annotations

import asyncio

from charging.clock import ManualClock
from charging.diameter.constants import ResultCode
from tests.cdf.acrs import ICID, T0
from tests.cdf.harness import ims_node, running_cdf, send_acr
from tests.conftest import Database


def samples(exposition: str) -> dict[str, float]:
    """Every sample line of an exposition as {'name{labels}': value}."""
    out: dict[str, float] = {}
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


async def test_open_records_and_the_backlog_of_each_sink_are_sampled(database: Database, tmp_path) -> None:
    clock = ManualClock(T0)
    # No broker: the CDRs wait for Kafka; the JSON-lines files sink is off until the end of the test.
    async with running_cdf(database.engine, clock=clock, publish=True, files_enabled=False) as cdf:
        async with ims_node(cdf.port, "scscf.test") as scscf:
            for n, (kind, session) in enumerate([("START", "s;1"), ("START", "s;2"), ("EVENT", "s;3")]):
                aca = await send_acr(scscf, session_id=session, record_type=kind, record_number=0, icid=f"{ICID}-{n}")
                assert aca["Result-Code"] == ResultCode.DIAMETER_SUCCESS
            clock.advance(42)
            await send_acr(scscf, session_id="s;2", record_type="STOP", record_number=1, icid=f"{ICID}-1")
        clock.advance(8)
        await cdf.service.sample_state()
        exposition = cdf.ctx.metrics.exposition()
        got = samples(exposition)
    assert "# TYPE cdf_outbox_published_total counter" in exposition  # rate() of it is the publish rate
    assert got["cdf_outbox_published_total"] == 0  # no broker here
    assert got["cdf_open_records"] == 1  # s;1 only: s;2 stopped, s;3 was an event
    assert got['cdf_outbox_backlog{sink="kafka"}'] == 2
    assert got['cdf_outbox_oldest_waiting_seconds{sink="kafka"}'] == 50  # the EVENT's CDR, closed at T0
    assert got["cdf_state_sampled_at_seconds"] == T0 + 50
    assert not any(key.startswith('cdf_outbox_backlog{sink="jsonl"}') for key in got)


async def test_a_delivered_backlog_samples_as_zero(database: Database, tmp_path) -> None:
    clock = ManualClock(T0)
    async with running_cdf(
        database.engine, clock=clock, publish=False, files_enabled=True, files_directory=str(tmp_path)
    ) as cdf:
        async with ims_node(cdf.port, "scscf.test") as scscf:
            await send_acr(scscf, session_id="e;1", record_type="EVENT", record_number=0, icid=ICID)
        for _ in range(200):  # the files sink writes the CDR soon after its ACA
            await cdf.service.sample_state()
            if samples(cdf.ctx.metrics.exposition())['cdf_outbox_backlog{sink="jsonl"}'] == 0:
                break
            await asyncio.sleep(0.05)
        got = samples(cdf.ctx.metrics.exposition())
        assert cdf.outbox_rows() == 1  # the CDR is there, and marked
    assert got['cdf_outbox_backlog{sink="jsonl"}'] == 0
    assert got['cdf_outbox_oldest_waiting_seconds{sink="jsonl"}'] == 0
