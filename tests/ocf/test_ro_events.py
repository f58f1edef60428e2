"""Immediate event charging (IEC, RFC 4006 section 6) end to end over TCP on both databases."""

from __future__ import annotations

from sqlalchemy import func, select

from charging.diameter.constants import ResultCode
from ocf import models as m
from tests.ocf.conftest import Ocf

SMS = 20  # Service-Identifier of the rated event


def event(ocf: Ocf, action: str, *extra, msisdn: str | None = "34600000001"):
    return ocf.ccr(ocf.new_session(), "EVENT_REQUEST", 0, ("Requested-Action", action), *extra, msisdn=msisdn)


def ledger_rows(ocf: Ocf, account: int) -> int:
    with ocf.engine.begin() as conn:
        return int(conn.execute(select(func.count()).where(m.transactions.c.account_id == account)).scalar_one())


async def test_direct_debiting_debits_the_rated_event_at_once(ocf: Ocf) -> None:
    account = ocf.account(balance=100)
    ocf.tariff(service_identifier=SMS, unit="units", price=15)
    cca = await ocf.send(
        event(
            ocf,
            "DIRECT_DEBITING",
            ("Service-Identifier", SMS),
            ("Requested-Service-Unit", {"CC-Service-Specific-Units": 2}),
        )
    )
    assert cca["Result-Code"] == ResultCode.DIAMETER_SUCCESS
    assert cca["Granted-Service-Unit"]["CC-Service-Specific-Units"] == 2
    assert cca["Cost-Information"]["Unit-Value"]["Value-Digits"] == 30
    assert ocf.balance(account) == (70, 0)


async def test_direct_debiting_beyond_the_balance_answers_4012_and_debits_nothing(ocf: Ocf) -> None:
    account = ocf.account(balance=20)
    ocf.tariff(service_identifier=SMS, unit="units", price=15)
    before = ledger_rows(ocf, account)
    cca = await ocf.send(
        event(
            ocf,
            "DIRECT_DEBITING",
            ("Service-Identifier", SMS),
            ("Requested-Service-Unit", {"CC-Service-Specific-Units": 2}),
        )
    )
    assert cca["Result-Code"] == ResultCode.DIAMETER_CREDIT_LIMIT_REACHED
    assert "Granted-Service-Unit" not in cca
    assert ocf.balance(account) == (20, 0)
    assert ledger_rows(ocf, account) == before


async def test_direct_debiting_of_money_needs_no_tariff(ocf: Ocf) -> None:
    account = ocf.account(balance=1000)
    money = {"CC-Money": {"Unit-Value": {"Value-Digits": 125, "Exponent": -2}, "Currency-Code": 978}}
    cca = await ocf.send(event(ocf, "DIRECT_DEBITING", ("Requested-Service-Unit", money)))
    assert cca["Result-Code"] == ResultCode.DIAMETER_SUCCESS
    assert ocf.balance(account) == (875, 0)


async def test_refund_account_credits_the_rated_amount(ocf: Ocf) -> None:
    account = ocf.account(balance=100)
    ocf.tariff(service_identifier=SMS, unit="units", price=15)
    cca = await ocf.send(
        event(
            ocf,
            "REFUND_ACCOUNT",
            ("Service-Identifier", SMS),
            ("Requested-Service-Unit", {"CC-Service-Specific-Units": 1}),
        )
    )
    assert cca["Result-Code"] == ResultCode.DIAMETER_SUCCESS
    assert ocf.balance(account) == (115, 0)


async def test_check_balance_says_whether_the_event_is_covered_without_reserving(ocf: Ocf) -> None:
    account = ocf.account(balance=20)
    ocf.tariff(service_identifier=SMS, unit="units", price=15)
    one = ("Requested-Service-Unit", {"CC-Service-Specific-Units": 1})
    two = ("Requested-Service-Unit", {"CC-Service-Specific-Units": 2})
    cca = await ocf.send(event(ocf, "CHECK_BALANCE", ("Service-Identifier", SMS), one))
    assert cca["Check-Balance-Result"] == 0  # ENOUGH_CREDIT
    cca = await ocf.send(event(ocf, "CHECK_BALANCE", ("Service-Identifier", SMS), two))
    assert cca["Check-Balance-Result"] == 1  # NO_CREDIT
    assert ocf.balance(account) == (20, 0)


async def test_price_enquiry_returns_the_cost_without_touching_the_account(ocf: Ocf) -> None:
    account = ocf.account(balance=20)
    ocf.tariff(service_identifier=SMS, unit="units", price=15, setup_fee=5)
    cca = await ocf.send(
        event(
            ocf,
            "PRICE_ENQUIRY",
            ("Service-Identifier", SMS),
            ("Requested-Service-Unit", {"CC-Service-Specific-Units": 3}),
        )
    )
    assert cca["Result-Code"] == ResultCode.DIAMETER_SUCCESS
    assert cca["Cost-Information"]["Unit-Value"]["Value-Digits"] == 50
    assert cca["Cost-Information"]["Currency-Code"] == 978
    assert ocf.balance(account) == (20, 0)


async def test_event_without_requested_action_is_refused_with_5005_naming_it(ocf: Ocf) -> None:
    ocf.account(balance=20)
    cca = await ocf.send(ocf.ccr(ocf.new_session(), "EVENT_REQUEST", 0))
    assert cca["Result-Code"] == ResultCode.DIAMETER_MISSING_AVP
    assert cca["Failed-AVP"].avps[0].name == "Requested-Action"
