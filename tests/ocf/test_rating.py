"""Rating without I/O: tariff selection, rounding, fees, affordability, money conversion."""

from __future__ import annotations

import pytest

from ocf.rating import Catalog, RatingError, Tariff, destination_digits, to_minor, unit_value

NOON = 1_767_268_800.0  # 2026-01-01T12:00:00Z
NIGHT = 1_767_222_000.0 + 3600  # 2026-01-01T00:00:00Z + 1 h


def tariff(id: int, **fields) -> Tariff:
    fields.setdefault("name", f"t{id}")
    fields.setdefault("unit", "time")
    fields.setdefault("price", 1)
    return Tariff(id=id, **fields)


def test_per_second_rounding_charges_each_second() -> None:
    assert tariff(1, price=2).charge(61) == 122


def test_per_minute_rounding_charges_every_started_minute() -> None:
    per_minute = tariff(1, price=10, increment=60)
    assert per_minute.charge(1) == 10
    assert per_minute.charge(60) == 10
    assert per_minute.charge(61) == 20


def test_setup_fee_and_minimum_charge() -> None:
    t = tariff(1, price=1, setup_fee=25, minimum_charge=30)
    assert t.charge(0) == 0
    assert t.charge(10) == 55
    assert t.charge(40) == 65
    assert t.charge(40, with_setup=False) == 40


def test_extra_cost_rounds_over_the_total_not_each_report() -> None:
    per_minute = tariff(1, price=10, increment=60)
    assert per_minute.extra_cost(30, 30) == 0  # the minute begun at 0 s already covers 30..60 s
    assert per_minute.extra_cost(30, 31) == 10


def test_affordable_is_the_most_units_the_money_pays_for() -> None:
    per_minute = tariff(1, price=10, increment=60)
    assert per_minute.affordable(0, 25, 300) == 120
    assert per_minute.affordable(0, 5, 300) == 0
    assert per_minute.affordable(0, 1000, 300) == 300
    with_setup = tariff(2, price=1, setup_fee=10)
    assert with_setup.affordable(0, 15, 100) == 5
    assert with_setup.affordable(5, 15, 100) == 15


def test_more_specific_tariff_wins() -> None:
    catalog = Catalog.of(
        [
            tariff(1, price=1),
            tariff(2, price=2, rating_group=100),
            tariff(3, price=3, rating_group=100, service_identifier=7),
        ]
    )
    assert catalog.select(100, 7, "", NOON).id == 3
    assert catalog.select(100, 8, "", NOON).id == 2
    assert catalog.select(200, None, "", NOON).id == 1


def test_longest_destination_prefix_wins() -> None:
    catalog = Catalog.of(
        [tariff(1, destination_prefix="34"), tariff(2, destination_prefix="346"), tariff(3, destination_prefix="44")]
    )
    assert catalog.select(None, None, "34600123456", NOON).id == 2
    assert catalog.select(None, None, "34911234567", NOON).id == 1
    with pytest.raises(RatingError):
        catalog.select(None, None, "1555", NOON)


def test_time_band_including_one_across_midnight() -> None:
    catalog = Catalog.of([tariff(1, price=5), tariff(2, price=1, band_start_minute=22 * 60, band_end_minute=6 * 60)])
    assert catalog.select(None, None, "", NIGHT).id == 2
    assert catalog.select(None, None, "", NOON).id == 1


def test_tariff_change_applies_from_its_effective_time_and_inactive_versions_withdraw_the_key() -> None:
    catalog = Catalog.of(
        [
            tariff(1, price=1, rating_group=1, effective_from=0),
            tariff(2, price=2, rating_group=1, effective_from=NOON),
            tariff(3, price=9, rating_group=1, effective_from=NOON + 60, active=False),
            tariff(4, price=7),
        ]
    )
    assert catalog.select(1, None, "", NOON - 1).id == 1
    assert catalog.select(1, None, "", NOON).id == 2
    assert catalog.select(1, None, "", NOON + 60).id == 4


def test_no_tariff_is_a_rating_error() -> None:
    with pytest.raises(RatingError):
        Catalog.of([tariff(1, rating_group=1)]).select(2, None, "", NOON)


def test_destination_digits_of_tel_and_sip_uris() -> None:
    assert destination_digits("tel:+34-91-123") == "3491123"
    assert destination_digits("sip:+34600123456@ims.example;user=phone") == "34600123456"
    assert destination_digits(None) == ""


def test_money_conversion_between_unit_value_and_minor_units() -> None:
    assert to_minor(125, -2, 978, round_up=False) == 125
    assert to_minor(3, 0, 978, round_up=False) == 300
    assert to_minor(12345, -3, 978, round_up=False) == 1234
    assert to_minor(12345, -3, 978, round_up=True) == 1235
    assert to_minor(500, 0, 392, round_up=False) == 500  # JPY has no minor unit
    assert unit_value(1234, 978) == {"Value-Digits": 1234, "Exponent": -2}
