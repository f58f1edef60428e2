"""Reservation arithmetic and the credit-control flow on in-memory state, without I/O."""

from __future__ import annotations

import json
import random

from charging.diameter.constants import CcRequestType, ResultCode
from ocf.control import Book, CreditControl, CreditRequest, ServiceUse, Units
from ocf.credit import Account, Bucket, Quota, quota_key, release, reserve, settle, size_request
from ocf.rating import UNIT_MONEY, UNIT_OCTETS, UNIT_TIME, UNIT_UNITS, Catalog, Tariff
from ocf.settings import OcfSettings
from ocf.store import quotas_json, quotas_of

PER_SECOND = Tariff(1, "voice", "time", price=1, rating_group=100)


def test_size_request_caps_at_the_configured_grant_and_defaults_to_it() -> None:
    assert size_request(None, 300) == 300
    assert size_request(0, 300) == 300
    assert size_request(100, 300) == 100
    assert size_request(1000, 300) == 300


def test_reserve_is_capped_by_what_other_reservations_leave_and_marks_the_last_grant_final() -> None:
    account = Account(1, 978, balance=100, reserved=70)
    quota = Quota(100, None, "time", tariff_id=1)
    grant = reserve(account, [], quota, PER_SECOND, 60, 0.0)
    assert (grant.units, grant.money, grant.final) == (30, 30, True)
    assert account.reserved == 100


def test_reserve_that_leaves_credit_for_more_is_not_final() -> None:
    account = Account(1, 978, balance=1000)
    grant = reserve(account, [], Quota(100, None, "time", tariff_id=1), PER_SECOND, 60, 0.0)
    assert grant.units == 60 and not grant.final


def test_settle_debits_used_units_and_releases_the_rest() -> None:
    account = Account(1, 978, balance=1000)
    quota = Quota(100, None, "time", tariff_id=1)
    reserve(account, [], quota, PER_SECOND, 60, 0.0)
    outcome = settle(account, [], quota, PER_SECOND, 45)
    assert (outcome.debited, outcome.uncollected) == (45, 0)
    assert (account.balance, account.reserved) == (955, 0)


def test_overuse_never_eats_another_sessions_reservation() -> None:
    account = Account(1, 978, balance=100)
    mine, theirs = Quota(100, None, "time", tariff_id=1), Quota(100, None, "time", tariff_id=1)
    reserve(account, [], mine, PER_SECOND, 50, 0.0)
    reserve(account, [], theirs, PER_SECOND, 50, 0.0)
    outcome = settle(account, [], mine, PER_SECOND, 80)
    assert (outcome.debited, outcome.uncollected) == (50, 30)
    assert account.balance == 50 and account.reserved == 50  # theirs is still fully backed


def test_bucket_funds_the_grant_before_money_and_release_gives_it_back() -> None:
    account = Account(1, 978, balance=1000)
    bucket = Bucket(9, 1, "time", amount=40)
    quota = Quota(100, None, "time", tariff_id=1)
    grant = reserve(account, [bucket], quota, PER_SECOND, 60, 0.0)
    assert (grant.units, grant.bucket_id, account.reserved, bucket.reserved) == (40, 9, 0, 40)
    release(account, [bucket], quota)
    assert bucket.reserved == 0


def test_expired_bucket_is_not_used() -> None:
    bucket = Bucket(9, 1, "time", amount=40, valid_until=10.0)
    grant = reserve(
        Account(1, 978, balance=1000), [bucket], Quota(100, None, "time", tariff_id=1), PER_SECOND, 60, 11.0
    )
    assert grant.bucket_id is None and grant.money == 60


def book(balance: int) -> Book:
    return Book(
        catalog=Catalog.of([PER_SECOND]),
        accounts={1: Account(1, 978, balance)},
        subscribers={(0, "346"): (1, 1)},
    )


def initial(sid: str, seconds: int) -> CreditRequest:
    use = ServiceUse(100, None, Units("time", seconds), requested_present=True)
    return CreditRequest(
        sid, CcRequestType.INITIAL, 0, subscription_ids=[(0, "346")], services=[use], multiple_services=True
    )


def test_many_sessions_on_one_account_are_granted_only_what_it_holds() -> None:
    control, state = CreditControl(OcfSettings(grant_seconds=60)), book(1000)
    answers = [control.handle(state, initial(f"s{n}", 60), 0.0) for n in range(50)]
    granted = sum(a.services[0].granted.amount for a in answers if a.services[0].granted)
    assert granted == 1000
    assert state.accounts[1].reserved == 1000
    assert sum(a.result_code == ResultCode.DIAMETER_SUCCESS for a in answers) == 17  # 16 x 60 s, then 40 s


def test_single_service_update_refused_for_credit_ends_the_session_after_debiting() -> None:
    control, state = CreditControl(OcfSettings(grant_seconds=60)), book(60)
    start = CreditRequest(
        "s",
        CcRequestType.INITIAL,
        0,
        subscription_ids=[(0, "346")],
        services=[ServiceUse(100, None, Units("time", 60), requested_present=True)],
    )
    assert control.handle(state, start, 0.0).result_code == ResultCode.DIAMETER_SUCCESS
    more = CreditRequest(
        "s",
        CcRequestType.UPDATE,
        1,
        services=[ServiceUse(100, None, Units("time", 60), requested_present=True, used=[Units("time", 60)])],
    )
    answer = control.handle(state, more, 1.0)
    assert answer.result_code == ResultCode.DIAMETER_CREDIT_LIMIT_REACHED
    assert state.sessions["s"].state == "closed"
    assert (state.accounts[1].balance, state.accounts[1].reserved) == (0, 0)


def test_quotas_json_is_what_json_dumps_gives_and_reads_back() -> None:
    rng = random.Random(7)

    def maybe(value: int) -> int | None:
        return None if rng.random() < 0.3 else value

    assert quotas_json({}) == "{}"
    for _ in range(200):
        quotas = {}
        for _ in range(rng.randint(1, 3)):
            rg, si = maybe(rng.randint(0, 2**32 - 1)), maybe(rng.randint(0, 2**32 - 1))
            quotas[quota_key(rg, si)] = Quota(
                rg,
                si,
                rng.choice([UNIT_TIME, UNIT_OCTETS, UNIT_UNITS, UNIT_MONEY]),
                granted=rng.randint(0, 2**40),
                money=rng.randint(0, 2**62),
                bucket_id=maybe(rng.randint(1, 10**6)),
                tariff_id=maybe(rng.randint(1, 10**6)),
                used=rng.randint(0, 2**40),
                charged=rng.randint(0, 2**62),
                setup_in_segment=rng.random() < 0.5,
                final=rng.random() < 0.5,
            )
        text = quotas_json(quotas)
        assert text == json.dumps({k: q.to_json() for k, q in quotas.items()}, separators=(",", ":"))
        assert quotas_of(text) == quotas
