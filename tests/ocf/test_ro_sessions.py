"""Session-based credit control (ECUR and SCUR) end to end: a client node, the OCF node, real TCP, a real database."""

from __future__ import annotations

from charging.diameter.constants import ResultCode
from tests.ocf.conftest import Ocf, mscc

SUCCESS = ResultCode.DIAMETER_SUCCESS


def granted(answer, rating_group: int = 100) -> dict:
    for group in answer.all("Multiple-Services-Credit-Control"):
        if group.get("Rating-Group") == rating_group:
            return group
    raise AssertionError(f"no MSCC for rating group {rating_group}")


async def test_scur_reserves_on_initial_debits_each_update_and_releases_on_terminate(ocf: Ocf) -> None:
    account = ocf.account(balance=1000)
    ocf.tariff(rating_group=100, price=2, increment=1)  # 2 per second
    sid = ocf.new_session()

    cca = await ocf.send(ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    assert cca["Result-Code"] == SUCCESS
    group = granted(cca)
    assert group["Result-Code"] == SUCCESS
    assert group["Granted-Service-Unit"]["CC-Time"] == 60
    assert group["Validity-Time"] == 30
    assert ocf.balance(account) == (1000, 120)

    cca = await ocf.send(
        ocf.ccr(
            sid, "UPDATE_REQUEST", 1, mscc(100, {"CC-Time": 60}, {"CC-Time": 50, "Reporting-Reason": "QUOTA_EXHAUSTED"})
        )
    )
    assert cca["Result-Code"] == SUCCESS
    assert granted(cca)["Granted-Service-Unit"]["CC-Time"] == 60
    assert cca["Cost-Information"]["Unit-Value"]["Value-Digits"] == 100
    assert ocf.balance(account) == (900, 120)

    cca = await ocf.send(
        ocf.ccr(sid, "TERMINATION_REQUEST", 2, mscc(100, used={"CC-Time": 7, "Reporting-Reason": "FINAL"}))
    )
    assert cca["Result-Code"] == SUCCESS
    assert ocf.balance(account) == (886, 0)


async def test_ecur_without_mscc_grants_at_command_level_and_debits_on_terminate(ocf: Ocf) -> None:
    account = ocf.account(balance=500)
    ocf.tariff(service_identifier=7, unit="units", price=10)
    sid = ocf.new_session()
    cca = await ocf.send(
        ocf.ccr(
            sid,
            "INITIAL_REQUEST",
            0,
            ("Service-Identifier", 7),
            ("Requested-Service-Unit", {"CC-Service-Specific-Units": 3}),
        )
    )
    assert cca["Result-Code"] == SUCCESS
    assert cca["Granted-Service-Unit"]["CC-Service-Specific-Units"] == 3
    assert ocf.balance(account) == (500, 30)
    cca = await ocf.send(
        ocf.ccr(
            sid,
            "TERMINATION_REQUEST",
            1,
            ("Service-Identifier", 7),
            ("Used-Service-Unit", {"CC-Service-Specific-Units": 2}),
        )
    )
    assert cca["Result-Code"] == SUCCESS
    assert ocf.balance(account) == (480, 0)
