"""What /metrics shows of the OCF's state in the database: open sessions, money held, pending ASR/RAR."""

from __future__ import annotations

from charging.diameter.constants import ResultCode
from ocf import provisioning as p
from tests.cdf.test_state_metrics import samples
from tests.ocf.conftest import Ocf, mscc


async def test_open_sessions_held_money_and_pending_actions_are_sampled(ocf: Ocf) -> None:
    account = ocf.account(balance=1000)
    ocf.tariff(rating_group=100, price=2, increment=1)
    first, second = ocf.new_session(), ocf.new_session()
    for sid in (first, second):
        cca = await ocf.send(ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
        assert cca["Result-Code"] == ResultCode.DIAMETER_SUCCESS
    await ocf.service.sample_state()
    got = samples(ocf.service.ctx.metrics.exposition())
    assert got["ocf_open_sessions"] == 2
    assert got["ocf_reserved_money"] == 240  # 60 s at 2 per second, twice
    assert got['ocf_pending_actions{action="abort"}'] == 0

    cca = await ocf.send(ocf.ccr(first, "TERMINATION_REQUEST", 1, mscc(100, used={"CC-Time": 5})))
    assert cca["Result-Code"] == ResultCode.DIAMETER_SUCCESS
    await ocf.service.teardown.stop()  # so the ASR stays pending while it is counted
    ocf.run(p.set_blocked, account, True, ocf.clock.now())
    await ocf.service.sample_state()
    got = samples(ocf.service.ctx.metrics.exposition())
    assert got["ocf_open_sessions"] == 1
    assert got["ocf_reserved_money"] == 120
    assert got['ocf_pending_actions{action="abort"}'] == 1
    assert got['ocf_pending_actions{action="reauth"}'] == 0
