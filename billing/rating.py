"""Rating: one CDR and one tariff plan in, charges out.

Pure: no database, no broker, no clock.  The plan is data (``TariffPlan``, stored as JSON
per version); ``rate`` applies it to a CDR:

- the service is the first ``ServiceTariff`` whose SIP methods / ICSIs match the CDR;
- the time band is the band the service started in, in the plan's time zone (a call that
  crosses from peak into off-peak is rated wholly at its starting band);
- duration is counted in increments (1 s = per second, 60 s = per minute) rounded up, to
  nearest or down, with an optional minimum; volume in units of ``unit_octets``
  (1 = per octet, 1_000_000 = per MB), rounded the same way; events count one each;
- the price per increment comes from the longest destination prefix matching the called
  party's digits, else from the service; a set-up fee is charged once per session
  (on the unpartitioned record or on the first partial record);
- interconnect: between the home network and a partner network named by IOI, a
  termination fee payable to the partner (our subscriber's call terminated there) or
  receivable from it (the partner's call terminated here).

Money is integer minor units of the plan's currency.  Prices per increment may be
fractional (Decimal); each charge is rounded once, half up, to whole minor units.
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass
from datetime import datetime, time
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from charging.cdr import Cdr

Rounding = Literal["up", "nearest", "down"]
Basis = Literal["duration", "volume", "event"]

_ROUNDING_MODES = {"up": ROUND_CEILING, "nearest": ROUND_HALF_UP, "down": ROUND_FLOOR}
# The extensions a CDR carries volume in (TS 32.299 Accounting-Input/Output-Octets).
VOLUME_KEYS = ("accounting_input_octets", "accounting_output_octets")
MAX_OCTETS = 1 << 62
# Slack for the duration check: nodes stamp times in whole seconds.
_DURATION_SLACK_SECONDS = 1.0
FIRST_PARTIAL_SEQUENCE_NUMBER = 1
UNMATCHED_SERVICE = "other"


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _upper(methods: list[str]) -> frozenset[str]:
    return _upper_cached(tuple(methods))


@functools.lru_cache(maxsize=256)
def _upper_cached(methods: tuple[str, ...]) -> frozenset[str]:
    return frozenset(m.upper() for m in methods)


class Component(enum.StrEnum):
    USAGE = "usage"
    SETUP = "setup"
    TERMINATION_PAYABLE = "termination_payable"  # we owe the partner network that terminated our call
    TERMINATION_RECEIVABLE = "termination_receivable"  # the partner network owes us for terminating its call


SUBSCRIBER_COMPONENTS = frozenset({Component.USAGE, Component.SETUP})


class ImpossibleCdr(ValueError):
    """A CDR whose values cannot describe real usage; it is dead-lettered, never rated."""


class _Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimeBand(_Plan):
    """A named part of the week, e.g. peak = Monday to Friday 08:00-20:00 (local time of the plan)."""

    name: str = Field(min_length=1, max_length=32)
    weekdays: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4, 5, 6])  # 0 = Monday
    start: time
    end: time  # exclusive; 00:00 means midnight at the end of the day; end < start wraps past midnight

    @field_validator("weekdays")
    @classmethod
    def _weekdays(cls, value: list[int]) -> list[int]:
        if not value or any(day < 0 or day > 6 for day in value):
            raise ValueError("weekdays are 0 (Monday) to 6 (Sunday), at least one")
        return value

    def covers(self, local: datetime) -> bool:
        clock = local.time().replace(tzinfo=None)
        if self.start < self.end:
            return local.weekday() in self.weekdays and self.start <= clock < self.end
        if self.end == time(0):  # until midnight
            return local.weekday() in self.weekdays and clock >= self.start
        # Wraps past midnight: the early-morning part belongs to the band of the previous day.
        if clock >= self.start:
            return local.weekday() in self.weekdays
        return clock < self.end and (local.weekday() - 1) % 7 in self.weekdays


class DestinationRate(_Plan):
    prefix: str = Field(min_length=1, max_length=20)  # digits of the called number, without '+'
    name: str = ""
    prices: dict[str, Decimal]  # band name -> minor units per increment
    setup_minor: int | None = Field(default=None, ge=0)  # replaces the service's set-up fee when given

    @field_validator("prefix")
    @classmethod
    def _digits(cls, value: str) -> str:
        if not value.isdigit():
            raise ValueError("a destination prefix is digits only")
        return value


class ServiceTariff(_Plan):
    service: str = Field(min_length=1, max_length=32)  # the name invoices and usage use, e.g. "voice"
    methods: list[str] = Field(default_factory=list)  # SIP methods this covers; empty with no icsi = any
    icsi: list[str] = Field(default_factory=list)  # IMS communication service identifiers this covers
    basis: Basis = "duration"
    increment_seconds: int = Field(default=1, ge=1, le=3600)  # 1 = per second, 60 = per minute
    unit_octets: int = Field(default=1, ge=1)  # 1 = per octet, 1_000_000 = per MB
    rounding: Rounding = "up"
    minimum_units: int = Field(default=0, ge=0)  # a used service is billed at least this many increments
    prices: dict[str, Decimal]  # band name -> minor units per increment, octet unit or event
    setup_minor: int = Field(default=0, ge=0)
    destinations: list[DestinationRate] = Field(default_factory=list)

    def matches(self, cdr: Cdr) -> bool:
        if not self.methods and not self.icsi:
            return True
        if cdr.sip_method and cdr.sip_method.upper() in _upper(self.methods):
            return True
        return cdr.ims_communication_service_identifier in self.icsi


class InterconnectPartner(_Plan):
    ioi: str = Field(min_length=1)  # the partner network's Inter-Operator Identifier
    payable_per_increment: Decimal = Field(default=Decimal(0), ge=0)  # we pay for our calls it terminates
    receivable_per_increment: Decimal = Field(default=Decimal(0), ge=0)  # it pays for its calls we terminate
    increment_seconds: int = Field(default=60, ge=1, le=3600)
    rounding: Rounding = "up"


class InterconnectTariff(_Plan):
    home_ioi: str = Field(min_length=1)  # our own network's IOI
    partners: list[InterconnectPartner] = Field(default_factory=list)


class TariffPlan(_Plan):
    currency: str = Field(min_length=3, max_length=3)
    time_zone: str = "UTC"
    default_band: str = "standard"  # the band outside every listed one
    bands: list[TimeBand] = Field(default_factory=list)
    services: list[ServiceTariff] = Field(default_factory=list)
    rated_record_types: list[str] = Field(default_factory=lambda: ["sCSCFRecord"])  # others are stored, not rated
    interconnect: InterconnectTariff | None = None

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _prices_cover_bands(self) -> TariffPlan:
        known = {self.default_band} | {band.name for band in self.bands}
        for service in self.services:
            tables = [("", service.prices)] + [(f" destination {d.prefix}", d.prices) for d in service.destinations]
            for where, prices in tables:
                if self.default_band not in prices:
                    raise ValueError(f"service {service.service}{where}: no price for band {self.default_band!r}")
                unknown = set(prices) - known
                if unknown:
                    raise ValueError(f"service {service.service}{where}: unknown bands {sorted(unknown)}")
                if any(price < 0 for price in prices.values()):
                    raise ValueError(f"service {service.service}{where}: prices cannot be negative")
        return self

    def band_at(self, instant: datetime) -> str:
        if not self.bands:
            return self.default_band
        local = instant.astimezone(_zone(self.time_zone))
        for band in self.bands:
            if band.covers(local):
                return band.name
        return self.default_band

    def service_for(self, cdr: Cdr) -> ServiceTariff | None:
        for service in self.services:
            if service.matches(cdr):
                return service
        return None


@dataclass(frozen=True, slots=True)
class Usage:
    """What a CDR measured: seconds, octets and one event."""

    duration_seconds: float
    octets: int


@dataclass(frozen=True, slots=True)
class Charge:
    component: Component
    service: str
    amount_minor: int
    quantity: Decimal  # increments, units or events billed
    band: str | None = None
    destination: str | None = None  # the matching destination prefix
    partner_ioi: str | None = None


@dataclass(frozen=True, slots=True)
class Rating:
    service: str
    usage: Usage
    charges: tuple[Charge, ...]
    rated: bool = True  # False: a record type the plan leaves to other nodes' records (no usage, no charge)

    @property
    def subscriber_minor(self) -> int:
        """What the subscriber pays (interconnect settles between operators, not on the invoice)."""
        return sum(c.amount_minor for c in self.charges if c.component in SUBSCRIBER_COMPONENTS)


def rated_at(cdr: Cdr) -> datetime:
    """The instant a CDR is rated at: when service delivery started, else when the record opened."""
    return cdr.service_delivery_start_time_stamp or cdr.record_opening_time


def measure(cdr: Cdr) -> Usage:
    """The usage a CDR records; raises ImpossibleCdr for values no real session produces."""
    if cdr.record_opening_time.tzinfo is None or rated_at(cdr).tzinfo is None:
        raise ImpossibleCdr("time stamps must carry a time zone")
    duration = cdr.duration_seconds
    if not math.isfinite(duration):
        raise ImpossibleCdr(f"duration_seconds is not a finite number: {duration}")
    window = (cdr.record_closure_time - cdr.record_opening_time).total_seconds()
    if duration > window + _DURATION_SLACK_SECONDS:
        raise ImpossibleCdr(f"duration_seconds {duration} exceeds the record's open time of {window} s")
    octets = 0
    for key in VOLUME_KEYS:
        value = cdr.extensions.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_OCTETS:
            raise ImpossibleCdr(f"extensions.{key} must be a whole number of octets, got {value!r}")
        octets += value
    return Usage(duration_seconds=duration, octets=octets)


def dialled_digits(address: str | None) -> str:
    """The digits of a called party (``tel:+49 30 1234``, ``sip:+49301234@host;user=phone``), or ''."""
    if not address:
        return ""
    user = address.strip()
    for scheme in ("tel:", "sip:", "sips:"):
        if user.lower().startswith(scheme):
            user = user[len(scheme) :]
            break
    user = user.split("@", 1)[0].split(";", 1)[0]
    user = user.lstrip("+")
    cleaned = "".join(ch for ch in user if ch not in " -.()")
    return cleaned if cleaned.isdigit() else ""


def _units(amount: Decimal, per: int, rounding: Rounding) -> Decimal:
    return (amount / Decimal(per)).quantize(Decimal(1), rounding=_ROUNDING_MODES[rounding])


def _money(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _longest_prefix(service: ServiceTariff, digits: str) -> DestinationRate | None:
    best: DestinationRate | None = None
    for destination in service.destinations:
        if digits.startswith(destination.prefix) and (best is None or len(destination.prefix) > len(best.prefix)):
            best = destination
    return best


def _starts_session(cdr: Cdr) -> bool:
    return cdr.record_sequence_number is None or cdr.record_sequence_number <= FIRST_PARTIAL_SEQUENCE_NUMBER


def _subscriber_charges(cdr: Cdr, plan: TariffPlan, service: ServiceTariff, usage: Usage) -> list[Charge]:
    band = plan.band_at(rated_at(cdr))
    destination = _longest_prefix(service, dialled_digits(cdr.called_party_address))
    prices = destination.prices if destination is not None else service.prices
    price = prices.get(band, prices[plan.default_band])
    if service.basis == "duration":
        quantity = _units(Decimal(repr(usage.duration_seconds)), service.increment_seconds, service.rounding)
    elif service.basis == "volume":
        quantity = _units(Decimal(usage.octets), service.unit_octets, service.rounding)
    else:
        quantity = Decimal(1)
    if quantity > 0 or service.basis == "event":
        quantity = max(quantity, Decimal(service.minimum_units))
    prefix = destination.prefix if destination is not None else None
    charges = [Charge(Component.USAGE, service.service, _money(quantity * price), quantity, band, prefix)]
    setup = destination.setup_minor if destination is not None and destination.setup_minor is not None else None
    setup = service.setup_minor if setup is None else setup
    if setup and _starts_session(cdr):
        charges.append(Charge(Component.SETUP, service.service, setup, Decimal(1), band, prefix))
    return charges


def _interconnect_charges(cdr: Cdr, tariff: InterconnectTariff, service: str, usage: Usage) -> list[Charge]:
    partners = {partner.ioi: partner for partner in tariff.partners}
    for pair in cdr.inter_operator_identifiers:
        originating, terminating = pair.originating_ioi, pair.terminating_ioi
        if originating == tariff.home_ioi and terminating in partners and terminating != tariff.home_ioi:
            partner, component = partners[terminating], Component.TERMINATION_PAYABLE
            price = partner.payable_per_increment
        elif terminating == tariff.home_ioi and originating in partners and originating != tariff.home_ioi:
            partner, component = partners[originating], Component.TERMINATION_RECEIVABLE
            price = partner.receivable_per_increment
        else:
            continue
        quantity = _units(Decimal(repr(usage.duration_seconds)), partner.increment_seconds, partner.rounding)
        return [Charge(component, service, _money(quantity * price), quantity, partner_ioi=partner.ioi)]
    return []


def rate(cdr: Cdr, plan: TariffPlan, usage: Usage | None = None) -> Rating:
    """The charges ``plan`` puts on ``cdr`` (none for record types the plan does not rate);
    ``usage`` saves measuring the CDR again when the caller has done it."""
    usage = usage if usage is not None else measure(cdr)
    tariff = plan.service_for(cdr)
    service = tariff.service if tariff is not None else UNMATCHED_SERVICE
    if cdr.record_type.value not in plan.rated_record_types:
        return Rating(service, usage, (), rated=False)
    charges: list[Charge] = []
    if tariff is not None:
        charges += _subscriber_charges(cdr, plan, tariff, usage)
    if plan.interconnect is not None:
        charges += _interconnect_charges(cdr, plan.interconnect, service, usage)
    return Rating(service, usage, tuple(charges))


def service_of(cdr: Cdr, plan: TariffPlan | None) -> str:
    if plan is None:
        return UNMATCHED_SERVICE
    tariff = plan.service_for(cdr)
    return tariff.service if tariff is not None else UNMATCHED_SERVICE
