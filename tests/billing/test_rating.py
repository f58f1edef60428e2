"""Rating core (pure): rounding, bands, destinations, set-up fees, volume, events, interconnect."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

import pytest
from pydantic import ValidationError

from billing.rating import (
    Component,
    DestinationRate,
    ImpossibleCdr,
    ServiceTariff,
    TariffPlan,
    TimeBand,
    dialled_digits,
    measure,
    rate,
)
from charging.cdr import Cdr, RecordType
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


# -- the rules, spelled out once more in plain Decimal arithmetic, against the rating code ---------------


def _reference_units(amount: Decimal, per: int, rounding: str) -> Decimal:
    modes = {"up": ROUND_CEILING, "nearest": ROUND_HALF_UP, "down": ROUND_FLOOR}
    return (amount / Decimal(per)).quantize(Decimal(1), rounding=modes[rounding])


def _reference_money(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _reference_rate(cdr: Cdr, plan: TariffPlan) -> tuple[str, bool, list[tuple[str, int, int, str | None, str | None]]]:
    """(service, rated, [(component, amount, quantity, destination, partner)]) by the documented rules."""
    usage = measure(cdr)
    seconds = Decimal(repr(usage.duration_seconds))
    tariff = next(
        (
            s
            for s in plan.services
            if (not s.methods and not s.icsi)
            or (cdr.sip_method and cdr.sip_method.upper() in {m.upper() for m in s.methods})
            or cdr.ims_communication_service_identifier in s.icsi
        ),
        None,
    )
    service = tariff.service if tariff else "other"
    if cdr.record_type.value not in plan.rated_record_types:
        return service, False, []
    charges: list[tuple[str, int, int, str | None, str | None]] = []
    if tariff is not None:
        band = plan.band_at(cdr.service_delivery_start_time_stamp or cdr.record_opening_time)
        digits = dialled_digits(cdr.called_party_address)
        matching = [d for d in tariff.destinations if digits.startswith(d.prefix)]
        destination = max(matching, key=lambda d: len(d.prefix)) if matching else None
        prices = destination.prices if destination else tariff.prices
        price = prices.get(band, prices[plan.default_band])
        if tariff.basis == "duration":
            quantity = _reference_units(seconds, tariff.increment_seconds, tariff.rounding)
        elif tariff.basis == "volume":
            quantity = _reference_units(Decimal(usage.octets), tariff.unit_octets, tariff.rounding)
        else:
            quantity = Decimal(1)
        if quantity > 0 or tariff.basis == "event":
            quantity = max(quantity, Decimal(tariff.minimum_units))
        prefix = destination.prefix if destination else None
        charges.append(("usage", _reference_money(quantity * price), int(quantity), prefix, None))
        setup = destination.setup_minor if destination and destination.setup_minor is not None else tariff.setup_minor
        if setup and (cdr.record_sequence_number is None or cdr.record_sequence_number <= 1):
            charges.append(("setup", setup, 1, prefix, None))
    if plan.interconnect is not None:
        home = plan.interconnect.home_ioi
        partners = {p.ioi: p for p in plan.interconnect.partners}
        for pair in cdr.inter_operator_identifiers:
            if pair.originating_ioi == home and pair.terminating_ioi in partners and pair.terminating_ioi != home:
                partner, component = partners[pair.terminating_ioi], "termination_payable"
                price = partner.payable_per_increment
            elif pair.terminating_ioi == home and pair.originating_ioi in partners and pair.originating_ioi != home:
                partner, component = partners[pair.originating_ioi], "termination_receivable"
                price = partner.receivable_per_increment
            else:
                continue
            quantity = _reference_units(seconds, partner.increment_seconds, partner.rounding)
            charges.append((component, _reference_money(quantity * price), int(quantity), None, partner.ioi))
            break
    return service, True, charges


def test_rating_agrees_with_the_rules_in_plain_decimal_arithmetic_on_random_cdrs_and_plans() -> None:
    rng = random.Random(20260310)
    prices = [Decimal(0), Decimal(1), Decimal(6), Decimal("0.25"), Decimal("2.5"), Decimal("9.99"), Decimal(10**6)]
    for _ in range(300):
        services = [
            ServiceTariff(
                service="voice",
                methods=["INVITE"],
                increment_seconds=rng.choice([1, 7, 60, 3600]),
                rounding=rng.choice(["up", "nearest", "down"]),
                minimum_units=rng.choice([0, 0, 1, 30]),
                prices={"offpeak": rng.choice(prices), "peak": rng.choice(prices)},
                setup_minor=rng.choice([0, 5]),
                destinations=[
                    DestinationRate(prefix="49", prices={"offpeak": rng.choice(prices)}),
                    DestinationRate(prefix="4915", prices={"offpeak": rng.choice(prices)}, setup_minor=0),
                    DestinationRate(prefix="1", prices={"offpeak": rng.choice(prices)}, setup_minor=9),
                ][: rng.randrange(4)],
            ),
            ServiceTariff(service="messaging", methods=["message"], basis="event", prices={"offpeak": Decimal(9)}),
            ServiceTariff(
                service="data",
                icsi=["urn:example:data"],
                basis="volume",
                unit_octets=rng.choice([1, 1000, 1_000_000]),
                rounding=rng.choice(["up", "nearest", "down"]),
                prices={"offpeak": rng.choice(prices)},
            ),
        ]
        plan = voice_plan(services=services)
        duration = rng.choice([0.0, 1.0, 59.0, 60.0, 61.0, 89.5, 0.1 + 0.2, 3599.999, float(rng.randrange(5000))])
        cdr = make_cdr(
            start=datetime(2026, 3, rng.randrange(1, 29), rng.randrange(24), rng.randrange(60), tzinfo=UTC),
            duration=duration,
            method=rng.choice(["INVITE", "invite", "MESSAGE", "SUBSCRIBE"]),
            called=rng.choice([None, "tel:+49 30 1234", "sip:+4915112345@home.net;user=phone", "tel:+1-212", "x"]),
            record_type=rng.choice([RecordType.S_CSCF, RecordType.S_CSCF, RecordType.P_CSCF]),
            sequence=rng.choice([None, 1, 2]),
            iois=rng.choice([None, ("home.net", "other.net"), ("other.net", "home.net"), ("home.net", "home.net")]),
            extensions=rng.choice(
                [{}, {"accounting_input_octets": rng.randrange(10**12), "accounting_output_octets": 7}]
            ),
            icsi=rng.choice([None, "urn:example:data"]),
        )
        rating = rate(cdr, plan)
        got = [
            (c.component.value, c.amount_minor, int(c.quantity), c.destination, c.partner_ioi) for c in rating.charges
        ]
        assert (rating.service, rating.rated, got) == _reference_rate(cdr, plan), (cdr, plan)
        assert all(c.quantity == int(c.quantity) for c in rating.charges)
        assert rating.subscriber_minor == sum(a for k, a, *_ in got if k in ("usage", "setup"))
