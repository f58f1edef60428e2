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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Literal, NamedTuple, Protocol
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


class OperatorPair(Protocol):
    @property
    def originating_ioi(self) -> str | None: ...

    @property
    def terminating_ioi(self) -> str | None: ...


class RatedRecord(Protocol):
    """What rating reads of a CDR: a ``charging.cdr.Cdr``, or the flat ``billing.ingest.Incoming`` of one
    (which has its IOI pairs as plain tuples too, ``operators``: rating reads those when there are)."""

    @property
    def record_type(self) -> str: ...

    @property
    def sip_method(self) -> str | None: ...

    @property
    def ims_communication_service_identifier(self) -> str | None: ...

    @property
    def called_party_address(self) -> str | None: ...

    @property
    def record_sequence_number(self) -> int | None: ...

    @property
    def inter_operator_identifiers(self) -> Sequence[OperatorPair]: ...

    @property
    def service_delivery_start_time_stamp(self) -> datetime | None: ...

    @property
    def record_opening_time(self) -> datetime: ...


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

    def matches(self, cdr: RatedRecord) -> bool:
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

    def service_for(self, cdr: RatedRecord) -> ServiceTariff | None:
        for service in self.services:
            if service.matches(cdr):
                return service
        return None


class Usage(NamedTuple):
    """What a CDR measured: seconds, octets and one event (a flat tuple: cheap to keep by the thousand)."""

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


def rated_at(cdr: RatedRecord) -> datetime:
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


_SEPARATORS = str.maketrans("", "", " -.()")


def dialled_digits(address: str | None) -> str:
    """The digits of a called party (``tel:+49 30 1234``, ``sip:+49301234@host;user=phone``), or ''."""
    if not address:
        return ""
    user = address.strip()
    head = user[:5].lower()
    for scheme in ("tel:", "sip:", "sips:"):
        if head.startswith(scheme):
            user = user[len(scheme) :]
            break
    user = user.split("@", 1)[0].split(";", 1)[0]
    cleaned = user.lstrip("+").translate(_SEPARATORS)
    return cleaned if cleaned.isdigit() else ""


def _units(amount: Decimal, per: int, rounding: Rounding) -> Decimal:
    return (amount / Decimal(per)).quantize(Decimal(1), rounding=_ROUNDING_MODES[rounding])


def _money(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


# Whole numbers up to these bounds go through integer arithmetic, which then gives exactly what the
# Decimal arithmetic above gives (28 significant digits leave no rounding to differ on); beyond them,
# and for fractions of a second or of a minor unit, the Decimal arithmetic itself runs.
_EXACT_SECONDS = 1e15
_EXACT_UNITS = 10**26
_EXACT_MINOR = 10**26


def _whole_units(amount: int, per: int, rounding: Rounding) -> int:
    if rounding == "up":
        return -(-amount // per)
    if rounding == "down":
        return amount // per
    return (2 * amount + per) // (2 * per)  # nearest, half up


def _count(amount: int | float, per: int, rounding: Rounding) -> int | Decimal:
    """``amount`` (seconds or octets, never negative) in increments of ``per``, rounded; an int when exact."""
    if isinstance(amount, int):
        if amount < _EXACT_UNITS:
            return _whole_units(amount, per, rounding)
        return _units(Decimal(amount), per, rounding)
    if amount.is_integer() and amount < _EXACT_SECONDS:
        return _whole_units(int(amount), per, rounding)
    return _units(Decimal(repr(amount)), per, rounding)


@dataclass(frozen=True, slots=True)
class _Price:
    exact: Decimal  # minor units per increment
    whole: int | None  # the same when it is a whole number

    @classmethod
    def of(cls, price: Decimal) -> _Price:
        return cls(price, int(price) if price.is_finite() and price == price.to_integral_value() else None)

    def times(self, quantity: int | Decimal) -> int:
        """quantity x price in whole minor units, rounded once, half up."""
        if self.whole is not None and isinstance(quantity, int):
            amount = quantity * self.whole
            if amount < _EXACT_MINOR:
                return amount
        return _money(Decimal(quantity) * self.exact)


@dataclass(frozen=True, slots=True)
class _Rates:
    """One price table (a service's or a destination's) resolved for every band of the plan."""

    by_band: dict[str, _Price]
    destination: str | None
    setup_minor: int


@dataclass(frozen=True, slots=True)
class _ServiceRates:
    tariff: ServiceTariff
    rates: _Rates
    destinations: tuple[tuple[str, _Rates], ...]  # longest prefix first
    by_address: dict[str | None, _Rates] = field(default_factory=dict)  # called party -> rates, remembered

    def for_address(self, address: str | None) -> _Rates:
        """The rates of the longest destination prefix the called party's digits start with."""
        if not self.destinations:
            return self.rates
        found = self.by_address.get(address)
        if found is None:
            found = self.rates
            digits = dialled_digits(address)
            if digits:
                for prefix, rates in self.destinations:
                    if digits.startswith(prefix):
                        found = rates
                        break
            if len(self.by_address) >= _MATCH_MEMO:
                self.by_address.clear()
            self.by_address[address] = found
        return found


class _Compiled:
    """A plan's lookups, prepared once per plan (a plan never changes once made)."""

    __slots__ = ("bands", "by_match", "partners", "plan", "rated_types", "services")

    def __init__(self, plan: TariffPlan) -> None:
        self.plan = plan
        self.rated_types = frozenset(plan.rated_record_types)
        self.bands = bool(plan.bands)
        names = [plan.default_band, *(band.name for band in plan.bands)]

        def rates(prices: dict[str, Decimal], destination: str | None, setup: int) -> _Rates:
            fallback = prices[plan.default_band]
            return _Rates({name: _Price.of(prices.get(name, fallback)) for name in names}, destination, setup)

        self.services: dict[int, _ServiceRates] = {}
        for service in plan.services:
            ordered = sorted(service.destinations, key=lambda d: -len(d.prefix))  # stable: the first one wins a tie
            self.services[id(service)] = _ServiceRates(
                service,
                rates(service.prices, None, service.setup_minor),
                tuple(
                    (
                        d.prefix,
                        rates(d.prices, d.prefix, service.setup_minor if d.setup_minor is None else d.setup_minor),
                    )
                    for d in ordered
                ),
            )
        self.partners: dict[str, tuple[InterconnectPartner, _Price, _Price]] = {}
        if plan.interconnect is not None:
            for partner in plan.interconnect.partners:
                prices = (_Price.of(partner.payable_per_increment), _Price.of(partner.receivable_per_increment))
                self.partners[partner.ioi] = (partner, *prices)  # a later entry for the same IOI replaces one
        self.by_match: dict[tuple[str | None, str | None], ServiceTariff | None] = {}

    def service_for(self, cdr: RatedRecord) -> ServiceTariff | None:
        method = cdr.sip_method
        key = (method.upper() if method else None, cdr.ims_communication_service_identifier)
        try:
            return self.by_match[key]
        except KeyError:
            pass
        if len(self.by_match) > _MATCH_MEMO:
            self.by_match.clear()
        found = self.by_match[key] = self.plan.service_for(cdr)
        return found


_MATCH_MEMO = 4096
_COMPILED_MEMO = 256
_compiled: dict[int, tuple[TariffPlan, _Compiled]] = {}


def _compile(plan: TariffPlan) -> _Compiled:
    entry = _compiled.get(id(plan))
    if entry is not None and entry[0] is plan:
        return entry[1]
    if len(_compiled) >= _COMPILED_MEMO:
        _compiled.clear()
    compiled = _Compiled(plan)
    _compiled[id(plan)] = (plan, compiled)  # holds the plan, so its id is not reused while it is here
    return compiled


def _starts_session(cdr: RatedRecord) -> bool:
    return cdr.record_sequence_number is None or cdr.record_sequence_number <= FIRST_PARTIAL_SEQUENCE_NUMBER


# A charge as plain values, in the order of ``Charge``'s fields (component as its value, quantity an int
# when whole): what ingestion stores straight away.  Plain tuples of plain values, because the garbage
# collector stops tracking those (it never stops tracking named tuples or objects).
Priced = tuple[str, str, int, "int | Decimal", "str | None", "str | None", "str | None"]
# service, rated, charges, subscriber_minor (the usage and set-up charges: what the subscriber pays).
Pricing = tuple[str, bool, tuple[Priced, ...], int]


class Measured(Protocol):
    """What rating reads of a CDR's usage: a ``Usage``, or anything with the same two figures."""

    @property
    def duration_seconds(self) -> float: ...

    @property
    def octets(self) -> int: ...


_USAGE, _SETUP = Component.USAGE.value, Component.SETUP.value
_PAYABLE, _RECEIVABLE = Component.TERMINATION_PAYABLE.value, Component.TERMINATION_RECEIVABLE.value
_COMPONENTS = {member.value: member for member in Component}


def _subscriber_charges(
    cdr: RatedRecord, plan: TariffPlan, service: _ServiceRates, usage: Measured, started_at: datetime
) -> tuple[Priced, ...]:
    tariff = service.tariff
    band = plan.band_at(started_at)
    rates = service.for_address(cdr.called_party_address)
    quantity: int | Decimal
    if tariff.basis == "duration":
        quantity = _count(usage.duration_seconds, tariff.increment_seconds, tariff.rounding)
    elif tariff.basis == "volume":
        quantity = _count(usage.octets, tariff.unit_octets, tariff.rounding)
    else:
        quantity = 1
    if (quantity > 0 or tariff.basis == "event") and quantity < tariff.minimum_units:
        quantity = tariff.minimum_units
    amount = rates.by_band[band].times(quantity)
    prefix = rates.destination
    usage_charge: Priced = (_USAGE, tariff.service, amount, quantity, band, prefix, None)
    if rates.setup_minor and _starts_session(cdr):
        return usage_charge, (_SETUP, tariff.service, rates.setup_minor, 1, band, prefix, None)
    return (usage_charge,)


def _interconnect_charges(
    cdr: RatedRecord,
    home: str,
    partners: dict[str, tuple[InterconnectPartner, _Price, _Price]],
    service: str,
    usage: Measured,
) -> tuple[Priced, ...]:
    for originating, terminating in _operator_pairs(cdr):
        if originating == home and terminating in partners and terminating != home:
            partner, price, _ = partners[terminating]
            component = _PAYABLE
        elif terminating == home and originating in partners and originating != home:
            partner, _, price = partners[originating]
            component = _RECEIVABLE
        else:
            continue
        quantity = _count(usage.duration_seconds, partner.increment_seconds, partner.rounding)
        return ((component, service, price.times(quantity), quantity, None, None, partner.ioi),)
    return ()


def _operator_pairs(cdr: RatedRecord) -> Iterable[tuple[str | None, str | None]]:
    pairs: tuple[tuple[str | None, str | None], ...] | None = getattr(cdr, "operators", None)
    if pairs is not None:
        return pairs
    return ((pair.originating_ioi, pair.terminating_ioi) for pair in cdr.inter_operator_identifiers)


def price(cdr: RatedRecord, plan: TariffPlan, usage: Measured) -> Pricing:
    """What ``rate`` says, as plain values (see ``Pricing``): the form ingestion works with."""
    compiled = _compile(plan)
    tariff = compiled.service_for(cdr)
    service = tariff.service if tariff is not None else UNMATCHED_SERVICE
    if cdr.record_type not in compiled.rated_types:  # a RecordType is the str of its value
        return service, False, (), 0
    charges: tuple[Priced, ...] = ()
    subscriber_minor = 0
    if tariff is not None:
        started_at = cdr.service_delivery_start_time_stamp or cdr.record_opening_time
        charges = _subscriber_charges(cdr, plan, compiled.services[id(tariff)], usage, started_at)
        for charge in charges:
            subscriber_minor += charge[2]
    if plan.interconnect is not None:
        charges += _interconnect_charges(cdr, plan.interconnect.home_ioi, compiled.partners, service, usage)
    return service, True, charges, subscriber_minor


def rate(cdr: RatedRecord, plan: TariffPlan, usage: Usage | None = None) -> Rating:
    """The charges ``plan`` puts on ``cdr`` (none for record types the plan does not rate);
    ``usage`` saves measuring the CDR again when the caller has done it (and is needed for anything
    but a ``Cdr``)."""
    if usage is None:
        if not isinstance(cdr, Cdr):
            raise TypeError("rate() measures only a Cdr; pass the usage of anything else")
        usage = measure(cdr)
    service, rated, priced, _ = price(cdr, plan, usage)
    charges = tuple(
        Charge(_COMPONENTS[component], name, amount, Decimal(quantity), band, destination, partner)
        for component, name, amount, quantity, band, destination, partner in priced
    )
    return Rating(service, usage, charges, rated)


def service_of(cdr: RatedRecord, plan: TariffPlan | None) -> str:
    if plan is None:
        return UNMATCHED_SERVICE
    tariff = plan.service_for(cdr)
    return tariff.service if tariff is not None else UNMATCHED_SERVICE
