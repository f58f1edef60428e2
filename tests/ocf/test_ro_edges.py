"""Errors and edge cases of Ro credit control, end to end over TCP on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from charging.diameter import Avp
from charging.diameter.constants import ResultCode
from ocf import models as m
from ocf import provisioning as p
from ocf.settings import OcfSettings
from tests.ocf.conftest import Ocf, mscc, short_settings

RC = ResultCode


def only_mscc(answer):
    groups = answer.all("Multiple-Services-Credit-Control")
    assert len(groups) == 1
    return groups[0]


async def test_unknown_subscriber_gets_5030_on_initial_and_event(ocf: Ocf) -> None:
    ocf.tariff(rating_group=100)
    cca = await ocf.send(ocf.ccr(ocf.new_session(), "INITIAL_REQUEST", 0, mscc(100, {}), msisdn="34999999999"))
    assert cca["Result-Code"] == RC.DIAMETER_USER_UNKNOWN
    cca = await ocf.send(
        ocf.ccr(ocf.new_session(), "EVENT_REQUEST", 0, ("Requested-Action", "DIRECT_DEBITING"), msisdn="34999999999")
    )
    assert cca["Result-Code"] == RC.DIAMETER_USER_UNKNOWN


async def test_update_and_terminate_of_an_unknown_session_get_5002(ocf: Ocf) -> None:
    ocf.account(balance=100)
    cca = await ocf.send(ocf.ccr("as.test;no;such", "UPDATE_REQUEST", 1, mscc(100, {})))
    assert cca["Result-Code"] == RC.DIAMETER_UNKNOWN_SESSION_ID
    cca = await ocf.send(ocf.ccr("as.test;no;such", "TERMINATION_REQUEST", 2))
    assert cca["Result-Code"] == RC.DIAMETER_UNKNOWN_SESSION_ID


async def test_terminated_session_answers_a_late_update_with_5002(ocf: Ocf) -> None:
    ocf.account(balance=100)
    ocf.tariff(rating_group=100)
    sid = ocf.new_session()
    await ocf.send(ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(100, {})))
    await ocf.send(ocf.ccr(sid, "TERMINATION_REQUEST", 2))
    cca = await ocf.send(ocf.ccr(sid, "UPDATE_REQUEST", 1, mscc(100, {}, {"CC-Time": 3})))
    assert cca["Result-Code"] == RC.DIAMETER_UNKNOWN_SESSION_ID


async def test_unknown_rating_group_is_5031_in_its_mscc_while_the_other_is_granted(ocf: Ocf) -> None:
    account = ocf.account(balance=100)
    ocf.tariff(rating_group=100)
    cca = await ocf.send(ocf.ccr(ocf.new_session(), "INITIAL_REQUEST", 0, mscc(100, {}), mscc(999, {})))
    assert cca["Result-Code"] == RC.DIAMETER_SUCCESS
    codes = {g["Rating-Group"]: g["Result-Code"] for g in cca.all("Multiple-Services-Credit-Control")}
    assert codes == {100: RC.DIAMETER_SUCCESS, 999: RC.DIAMETER_RATING_FAILED}
    assert ocf.balance(account) == (100, 60)


async def test_only_an_unknown_rating_group_fails_the_initial_request_and_leaves_no_session(ocf: Ocf) -> None:
    account = ocf.account(balance=100)
    sid = ocf.new_session()
    cca = await ocf.send(ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(999, {})))
    assert cca["Result-Code"] == RC.DIAMETER_RATING_FAILED
    assert ocf.run(p.list_sessions, account) == []


async def test_unserved_service_context_gets_5031_with_the_context_in_failed_avp(ocf: Ocf) -> None:
    ocf.account(balance=100)
    cca = await ocf.send(ocf.ccr(ocf.new_session(), "INITIAL_REQUEST", 0, context="mnc001.mcc001.18.32251@3gpp.org"))
    assert cca["Result-Code"] == RC.DIAMETER_RATING_FAILED
    assert cca["Failed-AVP"]["Service-Context-Id"] == "mnc001.mcc001.18.32251@3gpp.org"


@pytest.mark.parametrize(
    "settings",
    [short_settings(service_contexts=["32260@3gpp.org", "32251@3gpp.org"], not_applicable_contexts=["32274@3gpp.org"])],
)
async def test_configured_contexts_are_served_or_declared_not_applicable(ocf: Ocf, settings: OcfSettings) -> None:
    ocf.account(balance=100)
    ocf.tariff(rating_group=100)
    cca = await ocf.send(ocf.ccr(ocf.new_session(), "INITIAL_REQUEST", 0, mscc(100, {}), context="32251@3gpp.org"))
    assert cca["Result-Code"] == RC.DIAMETER_SUCCESS
    cca = await ocf.send(ocf.ccr(ocf.new_session(), "INITIAL_REQUEST", 0, mscc(100, {}), context="x.32274@3gpp.org"))
    assert cca["Result-Code"] == RC.DIAMETER_CREDIT_CONTROL_NOT_APPLICABLE


async def test_free_service_gets_4011_credit_control_not_applicable(ocf: Ocf) -> None:
    ocf.account(balance=100)
    ocf.tariff(rating_group=5, price=0)
    cca = await ocf.send(ocf.ccr(ocf.new_session(), "INITIAL_REQUEST", 0, mscc(5, {})))
    assert cca["Result-Code"] == RC.DIAMETER_CREDIT_CONTROL_NOT_APPLICABLE


async def test_blocked_account_is_denied_service_with_4010(ocf: Ocf) -> None:
    account = ocf.account(balance=100)
    ocf.tariff(rating_group=100)
    ocf.run(p.set_blocked, account, True, ocf.clock.now())
    cca = await ocf.send(ocf.ccr(ocf.new_session(), "INITIAL_REQUEST", 0, mscc(100, {})))
    assert cca["Result-Code"] == RC.DIAMETER_END_USER_SERVICE_DENIED


async def test_zero_balance_grants_nothing_and_answers_4012(ocf: Ocf) -> None:
    account = ocf.account(balance=0)
    ocf.tariff(rating_group=100)
    cca = await ocf.send(ocf.ccr(ocf.new_session(), "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 10})))
    assert cca["Result-Code"] == RC.DIAMETER_CREDIT_LIMIT_REACHED
    assert only_mscc(cca)["Result-Code"] == RC.DIAMETER_CREDIT_LIMIT_REACHED
    assert "Granted-Service-Unit" not in only_mscc(cca)
    assert ocf.balance(account) == (0, 0)


async def test_credit_limit_lets_the_balance_go_below_zero_that_far(ocf: Ocf) -> None:
    account = ocf.account(balance=0, credit_limit=30)
    ocf.tariff(rating_group=100)
    cca = await ocf.send(ocf.ccr(ocf.new_session(), "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    assert only_mscc(cca)["Granted-Service-Unit"]["CC-Time"] == 30
    assert ocf.balance(account) == (0, 30)


async def test_last_affordable_grant_carries_final_unit_indication_terminate(ocf: Ocf) -> None:
    ocf.account(balance=50)
    ocf.tariff(rating_group=100)
    cca = await ocf.send(ocf.ccr(ocf.new_session(), "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    group = only_mscc(cca)
    assert group["Granted-Service-Unit"]["CC-Time"] == 50
    assert group["Final-Unit-Indication"]["Final-Unit-Action"] == 0  # TERMINATE


async def test_a_grant_the_balance_still_covers_after_carries_no_final_unit_indication(ocf: Ocf) -> None:
    ocf.account(balance=500)
    ocf.tariff(rating_group=100)
    cca = await ocf.send(ocf.ccr(ocf.new_session(), "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    assert "Final-Unit-Indication" not in only_mscc(cca)


@pytest.mark.parametrize(
    "settings", [short_settings(final_unit_action="REDIRECT", redirect_server_address="sip:topup@ims.test")]
)
async def test_final_unit_action_redirect_names_the_redirect_server(ocf: Ocf, settings: OcfSettings) -> None:
    ocf.account(balance=50)
    ocf.tariff(rating_group=100)
    cca = await ocf.send(ocf.ccr(ocf.new_session(), "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    fui = only_mscc(cca)["Final-Unit-Indication"]
    assert fui["Final-Unit-Action"] == 1  # REDIRECT
    assert fui["Redirect-Server"]["Redirect-Server-Address"] == "sip:topup@ims.test"


async def test_usage_beyond_the_grant_is_debited_only_as_far_as_the_free_credit_reaches(ocf: Ocf) -> None:
    account = ocf.account(balance=130)
    ocf.tariff(rating_group=100, price=2)
    sid = ocf.new_session()
    await ocf.send(ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    assert ocf.balance(account) == (130, 120)
    cca = await ocf.send(ocf.ccr(sid, "TERMINATION_REQUEST", 1, mscc(100, used={"CC-Time": 100})))
    assert cca["Result-Code"] == RC.DIAMETER_SUCCESS
    assert ocf.balance(account) == (0, 0)
    latest = ocf.run(p.history, account, 1)[0]
    assert (latest["amount"], latest["uncollected"]) == (-130, 70)


async def test_negative_money_is_refused_with_5004_naming_cc_money(ocf: Ocf) -> None:
    ocf.account(balance=100)
    money = {"CC-Money": {"Unit-Value": {"Value-Digits": -5}, "Currency-Code": 978}}
    cca = await ocf.send(
        ocf.ccr(
            ocf.new_session(),
            "EVENT_REQUEST",
            0,
            ("Requested-Action", "DIRECT_DEBITING"),
            ("Requested-Service-Unit", money),
        )
    )
    assert cca["Result-Code"] == RC.DIAMETER_INVALID_AVP_VALUE
    assert "CC-Money" in cca["Failed-AVP"]


async def test_absent_requested_units_get_the_configured_grant(ocf: Ocf) -> None:
    ocf.account(balance=1000)
    ocf.tariff(rating_group=100)
    cca = await ocf.send(ocf.ccr(ocf.new_session(), "INITIAL_REQUEST", 0, mscc(100, {})))
    assert only_mscc(cca)["Granted-Service-Unit"]["CC-Time"] == 60


async def test_request_above_the_configured_grant_is_capped_to_it(ocf: Ocf) -> None:
    ocf.account(balance=1000)
    ocf.tariff(rating_group=100)
    cca = await ocf.send(ocf.ccr(ocf.new_session(), "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 3600})))
    assert only_mscc(cca)["Granted-Service-Unit"]["CC-Time"] == 60


async def test_updates_out_of_sequence_are_each_answered(ocf: Ocf) -> None:
    account = ocf.account(balance=1000)
    ocf.tariff(rating_group=100)
    sid = ocf.new_session()
    await ocf.send(ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    second = await ocf.send(ocf.ccr(sid, "UPDATE_REQUEST", 2, mscc(100, {"CC-Time": 60}, {"CC-Time": 60})))
    first = await ocf.send(ocf.ccr(sid, "UPDATE_REQUEST", 1, mscc(100, {"CC-Time": 60}, {"CC-Time": 10})))
    assert second["Result-Code"] == first["Result-Code"] == RC.DIAMETER_SUCCESS
    assert first["CC-Request-Number"] == 1
    assert ocf.balance(account) == (930, 60)


async def test_avps_the_abnf_does_not_name_are_accepted(ocf: Ocf) -> None:
    ocf.account(balance=100)
    ocf.tariff(rating_group=100)
    unknown = Avp.from_raw(64999, b"vendor data", vendor_id=0, flags=0)
    cca = await ocf.send(
        ocf.ccr(ocf.new_session(), "INITIAL_REQUEST", 0, mscc(100, {}), ("User-Name", "alice"), unknown)
    )
    assert cca["Result-Code"] == RC.DIAMETER_SUCCESS


@pytest.mark.parametrize("settings", [short_settings(quota_threshold_percent=20, low_balance_threshold=500)])
async def test_thresholds_and_low_balance_indication_when_configured(ocf: Ocf, settings: OcfSettings) -> None:
    ocf.account(balance=400)
    ocf.tariff(rating_group=100)
    cca = await ocf.send(ocf.ccr(ocf.new_session(), "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    assert only_mscc(cca)["Time-Quota-Threshold"] == 12
    assert cca["Low-Balance-Indication"] == 1  # YES
    assert cca["Remaining-Balance"]["Unit-Value"]["Value-Digits"] == 340


async def test_tariff_change_applies_from_its_stated_time(ocf: Ocf) -> None:
    account = ocf.account(balance=10_000)
    ocf.tariff(rating_group=100, price=1)
    ocf.tariff(rating_group=100, price=3, effective_from=ocf.clock.now() + 100)
    sid = ocf.new_session()
    await ocf.send(ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    assert ocf.balance(account) == (10_000, 60)
    ocf.clock.advance(120)
    await ocf.send(ocf.ccr(sid, "UPDATE_REQUEST", 1, mscc(100, {"CC-Time": 60}, {"CC-Time": 60})))
    assert ocf.balance(account) == (9_940, 180)


async def test_unit_bucket_is_used_before_money(ocf: Ocf) -> None:
    account = ocf.account(balance=1000)
    ocf.tariff(rating_group=100)
    now = ocf.clock.now()
    bucket = ocf.run(p.add_bucket, account, "time", 90, now, 100, None, now + 3600)
    sid = ocf.new_session()
    await ocf.send(ocf.ccr(sid, "INITIAL_REQUEST", 0, mscc(100, {"CC-Time": 60})))
    assert ocf.balance(account) == (1000, 0)
    await ocf.send(ocf.ccr(sid, "UPDATE_REQUEST", 1, mscc(100, {"CC-Time": 60}, {"CC-Time": 60})))
    cca = await ocf.send(ocf.ccr(sid, "TERMINATION_REQUEST", 2, mscc(100, used={"CC-Time": 40})))
    assert cca["Result-Code"] == RC.DIAMETER_SUCCESS
    with ocf.engine.begin() as conn:
        left = conn.execute(select(m.buckets.c.amount).where(m.buckets.c.id == bucket["id"])).scalar_one()
    assert left == 0
    assert ocf.balance(account) == (990, 0)  # 30 of the 40 s from the bucket, 10 s at 1 per second
