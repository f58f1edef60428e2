"""Rating core (pure): rounding, bands, destinations, set-up fees, volume, events, interconnect."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from billing.rating import (
    Component,
    DestinationRate,
    ImpossibleCdr,
    ServiceTariff,
    TimeBand,
    dialled_digits,
    measure,
    rate,
)
from charging.cdr import RecordType
from tests.billing.factories import make_cdr, voice_plan

WEDNESDAY_10H_BERLIN = datetime(2026, 3, 11, 9, 0, tzinfo=UTC)  # 10:00 CET
WEDNESDAY_21H_BERLIN = datetime(2026, 3, 11, 20, 0, tzinfo=UTC)
SATURDAY_10H_BERLIN = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)


def _amounts(rating_charges: object) -> dict[str, int]:
    return {c.component.value: c.amount_minor for c in rating_charges}  # type: ignore[attr-defined]


def test_per_minute_rounds_a_started_minute_up_and_adds_the_setup_fee() -> None:
    rating = rate(make_cdr(start=WEDNESDAY_10H_BERLIN, duration=61), voice_plan())
    assert rating.service == "voice"
    assert _amounts(rating.charges) == {"usage": 20, "setup": 5}
    assert rating.subscriber_minor == 25


def test_per_second_rating_charges_each_second_and_rounds_money_half_up() -> None:
    per_second = ServiceTariff(
        service="voice", methods=["INVITE"], increment_seconds=1, prices={"offpeak": Decimal("0.25")}
    )
    plan = voice_plan(services=[per_second], bands=[])
    assert rate(make_cdr(duration=10), plan).subscriber_minor == 3  # 2.5 -> 3
    assert rate(make_cdr(duration=9.2), plan).subscriber_minor == 3  # 10 s (rounded up) * 0.25 = 2.5 -> 3
    assert rate(make_cdr(duration=8), plan).subscriber_minor == 2


@pytest.mark.parametrize(("rounding", "expected_minutes"), [("up", 2), ("nearest", 1), ("down", 1)])
def test_rounding_rule_decides_how_a_partial_minute_counts(rounding: str, expected_minutes: int) -> None:
    service = ServiceTariff(
        service="voice", methods=["INVITE"], increment_seconds=60, rounding=rounding, prices={"offpeak": Decimal(6)}
    )
    rating = rate(make_cdr(duration=75), voice_plan(services=[service], bands=[]))
    assert rating.charges[0].quantity == expected_minutes
    assert rating.subscriber_minor == 6 * expected_minutes


def test_minimum_units_bill_a_short_call_as_the_minimum() -> None:
    service = ServiceTariff(
        service="voice", methods=["INVITE"], increment_seconds=1, minimum_units=30, prices={"offpeak": Decimal(1)}
    )
    plan = voice_plan(services=[service], bands=[])
    assert rate(make_cdr(duration=4), plan).subscriber_minor == 30
    assert rate(make_cdr(duration=0), plan).subscriber_minor == 0  # an unanswered call is not billed


def test_peak_band_applies_on_weekdays_in_the_plans_time_zone_only() -> None:
    plan = voice_plan()
    peak = rate(make_cdr(start=WEDNESDAY_10H_BERLIN, duration=60), plan)
    evening = rate(make_cdr(start=WEDNESDAY_21H_BERLIN, duration=60), plan)
    weekend = rate(make_cdr(start=SATURDAY_10H_BERLIN, duration=60), plan)
    assert (peak.charges[0].band, peak.charges[0].amount_minor) == ("peak", 10)
    assert (evening.charges[0].band, evening.charges[0].amount_minor) == ("offpeak", 6)
    assert (weekend.charges[0].band, weekend.charges[0].amount_minor) == ("offpeak", 6)
    # 07:30 UTC is 08:30 in Berlin (winter): peak there, though it is before 08:00 UTC.
    assert rate(make_cdr(start=datetime(2026, 3, 11, 7, 30, tzinfo=UTC)), plan).charges[0].band == "peak"


def test_band_that_wraps_past_midnight_covers_the_early_morning_of_the_next_day() -> None:
    night = TimeBand(name="night", weekdays=[4], start="22:00", end="06:00")  # Friday night
    service = ServiceTariff(service="voice", prices={"offpeak": Decimal(6), "night": Decimal(1)})
    plan = voice_plan(time_zone="UTC", bands=[night], services=[service])
    assert plan.band_at(datetime(2026, 3, 13, 23, 0, tzinfo=UTC)) == "night"  # Friday 23:00
    assert plan.band_at(datetime(2026, 3, 14, 5, 59, tzinfo=UTC)) == "night"  # Saturday 05:59
    assert plan.band_at(datetime(2026, 3, 14, 6, 0, tzinfo=UTC)) == "offpeak"
    assert plan.band_at(datetime(2026, 3, 13, 5, 0, tzinfo=UTC)) == "offpeak"  # Friday early: Thursday's night


def test_longest_destination_prefix_on_the_called_party_sets_price_and_setup() -> None:
    service = ServiceTariff(
        service="voice",
        methods=["INVITE"],
        increment_seconds=60,
        prices={"offpeak": Decimal(6)},
        setup_minor=5,
        destinations=[
            DestinationRate(prefix="49", name="Germany", prices={"offpeak": Decimal(4)}),
            DestinationRate(prefix="4915", name="German mobile", prices={"offpeak": Decimal(20)}, setup_minor=0),
            DestinationRate(prefix="1", name="NANP", prices={"offpeak": Decimal(30)}),
        ],
    )
    plan = voice_plan(services=[service], bands=[])
    mobile = rate(make_cdr(called="sip:+4915112345@home.net;user=phone", duration=60), plan)
    assert _amounts(mobile.charges) == {"usage": 20}
    assert mobile.charges[0].destination == "4915"
    fixed = rate(make_cdr(called="tel:+49-30-123", duration=60), plan)
    assert _amounts(fixed.charges) == {"usage": 4, "setup": 5}
    unknown = rate(make_cdr(called="tel:+331234", duration=60), plan)
    assert unknown.charges[0].destination is None
    assert unknown.subscriber_minor == 11


def test_dialled_digits_reads_tel_and_sip_user_parts() -> None:
    assert dialled_digits("tel:+49 30 1234") == "49301234"
    assert dialled_digits("sip:+4930@ims.example;user=phone") == "4930"
    assert dialled_digits("sip:bob@ims.example") == ""
    assert dialled_digits(None) == ""


def test_setup_fee_is_charged_on_the_first_partial_record_only() -> None:
    plan = voice_plan()
    first = rate(make_cdr(session_id="s-partial", sequence=1, duration=60), plan)
    second = rate(make_cdr(session_id="s-partial", sequence=2, duration=60), plan)
    assert Component.SETUP in {c.component for c in first.charges}
    assert Component.SETUP not in {c.component for c in second.charges}


def test_volume_is_billed_per_started_megabyte_from_the_octet_counters() -> None:
    cdr = make_cdr(
        method="INVITE",
        icsi="urn:example:data",
        extensions={"accounting_input_octets": 1_500_000, "accounting_output_octets": 600_000},
    )
    service = voice_plan().services[2]
    rating = rate(cdr, voice_plan(services=[service]))
    assert rating.service == "data"
    assert rating.usage.octets == 2_100_000
    assert rating.charges[0].quantity == 3
    assert rating.subscriber_minor == 6


def test_per_octet_volume_rating() -> None:
    per_octet = ServiceTariff(service="data", basis="volume", unit_octets=1, prices={"offpeak": Decimal("0.001")})
    cdr = make_cdr(extensions={"accounting_input_octets": 12_345})
    assert rate(cdr, voice_plan(services=[per_octet], bands=[])).subscriber_minor == 12


def test_an_event_is_billed_once_whatever_its_duration() -> None:
    rating = rate(make_cdr(method="MESSAGE", duration=0), voice_plan())
    assert rating.service == "messaging"
    assert _amounts(rating.charges) == {"usage": 9}


def test_unmatched_service_is_recorded_as_other_without_charges() -> None:
    rating = rate(make_cdr(method="SUBSCRIBE"), voice_plan(services=voice_plan().services[:1]))
    assert rating.service == "other"
    assert rating.charges == ()


def test_records_of_nodes_the_plan_does_not_rate_get_no_charges() -> None:
    rating = rate(make_cdr(record_type=RecordType.P_CSCF), voice_plan())
    assert not rating.rated
    assert rating.charges == ()


def test_interconnect_payable_to_the_terminating_partner_network() -> None:
    rating = rate(make_cdr(start=WEDNESDAY_21H_BERLIN, duration=125, iois=("home.net", "other.net")), voice_plan())
    payable = [c for c in rating.charges if c.component is Component.TERMINATION_PAYABLE]
    assert [(c.partner_ioi, c.quantity, c.amount_minor) for c in payable] == [("other.net", 3, 9)]
    assert rating.subscriber_minor == 3 * 6 + 5  # interconnect never lands on the subscriber's bill


def test_interconnect_receivable_from_the_originating_partner_network() -> None:
    rating = rate(make_cdr(duration=60, iois=("other.net", "home.net")), voice_plan())
    receivable = [c for c in rating.charges if c.component is Component.TERMINATION_RECEIVABLE]
    assert [(c.partner_ioi, c.amount_minor) for c in receivable] == [("other.net", 2)]


def test_no_interconnect_within_the_home_network_or_with_unknown_partners() -> None:
    plan = voice_plan()
    for iois in (("home.net", "home.net"), ("home.net", "stranger.net"), (None, None)):
        rating = rate(make_cdr(iois=iois), plan)
        assert {c.component for c in rating.charges} <= {Component.USAGE, Component.SETUP}


def test_impossible_values_are_refused_before_rating() -> None:
    with pytest.raises(ImpossibleCdr, match="exceeds"):
        measure(make_cdr(duration=90).model_copy(update={"duration_seconds": 5000.0}))
    with pytest.raises(ImpossibleCdr, match="accounting_input_octets"):
        measure(make_cdr(extensions={"accounting_input_octets": -5}))
    with pytest.raises(ImpossibleCdr, match="finite"):
        measure(make_cdr().model_copy(update={"duration_seconds": float("nan")}))


def test_plan_validation_names_a_missing_default_band_price_and_unknown_zone() -> None:
    with pytest.raises(ValidationError, match="no price for band 'offpeak'"):
        voice_plan(services=[ServiceTariff(service="voice", prices={"peak": Decimal(1)})])
    with pytest.raises(ValidationError, match="unknown time zone"):
        voice_plan(time_zone="Mars/Olympus")
    with pytest.raises(ValidationError, match="unknown bands"):
        voice_plan(services=[ServiceTariff(service="voice", prices={"offpeak": Decimal(1), "lunch": Decimal(1)})])
