"""Rating: which tariff applies to a service use, and what a number of units costs.  No I/O.

A tariff prices one unit type (time in seconds, octets, or service-specific units) in
integer minor units per started increment: ``price=10, increment=60`` is 10 per started
minute, ``increment=1`` per second.  On top come a set-up fee, charged once with the
first used unit, and a minimum charge for the usage part.

Tariffs are keyed by (rating group, service identifier, destination prefix, time band);
``None``/``""`` in a key field matches anything.  A key may have several versions: the one
with the latest ``effective_from`` not after the time of use is in force, and an inactive
version withdraws the key from then on.  Among the keys in force that match a use, the
most specific wins: service identifier, then rating group, then the longest destination
prefix, then a time band.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

UNIT_TIME = "time"
UNIT_OCTETS = "octets"
UNIT_UNITS = "units"
UNIT_MONEY = "money"
RATED_UNITS = (UNIT_TIME, UNIT_OCTETS, UNIT_UNITS)

MINUTES_PER_DAY = 24 * 60
_CHOSEN_LIMIT = 10_000  # tariff choices a catalog remembers
_ASCII_NON_DIGITS = {c: None for c in range(128) if not chr(c).isdigit()}


class RatingError(Exception):
    """A service use that cannot be priced: DIAMETER_RATING_FAILED (5031)."""


@dataclass(frozen=True, slots=True)
class Tariff:
    id: int
    name: str
    unit: str
    price: int  # minor units per started increment
    increment: int = 1
    setup_fee: int = 0
    minimum_charge: int = 0
    currency: int = 978
    rating_group: int | None = None
    service_identifier: int | None = None
    destination_prefix: str = ""
    band_start_minute: int | None = None  # minute of the UTC day the band starts, inclusive
    band_end_minute: int | None = None  # exclusive; a band may wrap past midnight
    active: bool = True
    effective_from: float = 0.0

    @property
    def key(self) -> tuple[int | None, int | None, str, int | None, int | None]:
        return (
            self.rating_group,
            self.service_identifier,
            self.destination_prefix,
            self.band_start_minute,
            self.band_end_minute,
        )

    @property
    def is_free(self) -> bool:
        return self.price == 0 and self.setup_fee == 0 and self.minimum_charge == 0

    def in_band(self, at: float) -> bool:
        start, end = self.band_start_minute, self.band_end_minute
        if start is None or end is None:
            return True
        minute = int(at // 60) % MINUTES_PER_DAY
        if start <= end:
            return start <= minute < end
        return minute >= start or minute < end  # a night band such as 22:00-06:00

    def matches(self, rating_group: int | None, service_identifier: int | None, destination: str, at: float) -> bool:
        if self.rating_group is not None and self.rating_group != rating_group:
            return False
        if self.service_identifier is not None and self.service_identifier != service_identifier:
            return False
        if self.destination_prefix and not destination.startswith(self.destination_prefix):
            return False
        return self.in_band(at)

    def specificity(self) -> tuple[bool, bool, int, bool]:
        return (
            self.service_identifier is not None,
            self.rating_group is not None,
            len(self.destination_prefix),
            self.band_start_minute is not None,
        )

    def charge(self, units: int, with_setup: bool = True) -> int:
        """What ``units`` cost in total: rounded up to whole increments, at least the minimum charge."""
        if units <= 0:
            return 0
        steps = -(-units // self.increment)
        usage = max(steps * self.price, self.minimum_charge)
        return usage + self.setup_fee if with_setup else usage

    def extra_cost(self, used: int, more: int, with_setup: bool = True) -> int:
        """What ``more`` units cost after ``used`` were already charged (rounding is over the total)."""
        return self.charge(used + more, with_setup) - self.charge(used, with_setup)

    def affordable(self, used: int, money: int, cap: int, with_setup: bool = True) -> int:
        """The most units, up to ``cap``, that ``money`` pays for after ``used`` units."""
        if cap <= 0 or money < 0:
            return 0
        if self.extra_cost(used, cap, with_setup) <= money:
            return cap
        low, high = 0, cap  # extra_cost is monotonic: the answer lies in [low, high)
        while high - low > 1:
            middle = (low + high) // 2
            if self.extra_cost(used, middle, with_setup) <= money:
                low = middle
            else:
                high = middle
        return low


@dataclass(slots=True)
class Catalog:
    """Every tariff version, with the selection rules above."""

    tariffs: list[Tariff] = field(default_factory=list)
    by_id: dict[int, Tariff] = field(default_factory=dict)
    # in_force() of the last span between two effective_from times asked about: [start, end)
    _span: tuple[float, float, list[Tariff]] = (0.0, -1.0, [])
    # select()'s choices among the tariffs of that span, by (rating group, service, destination, minute of
    # the day when a band is in force, else -1); None when nothing matches
    _chosen: dict[tuple[int | None, int | None, str, int], Tariff | None] = field(default_factory=dict)
    _chosen_among: list[Tariff] | None = None
    _banded: bool = False

    @classmethod
    def of(cls, tariffs: Iterable[Tariff]) -> Catalog:
        rows = sorted(tariffs, key=lambda t: (t.effective_from, t.id))
        return cls(rows, {t.id: t for t in rows})

    def in_force(self, at: float) -> list[Tariff]:
        """The version of each key that applies at ``at`` (inactive ones dropped)."""
        start, end, cached = self._span
        if start <= at < end:
            return cached
        current: dict[tuple[int | None, int | None, str, int | None, int | None], Tariff] = {}
        start, end = float("-inf"), float("inf")
        for tariff in self.tariffs:  # sorted by effective_from: later versions overwrite
            if tariff.effective_from > at:
                end = tariff.effective_from
                break
            current[tariff.key] = tariff
            start = tariff.effective_from
        found = [t for t in current.values() if t.active]
        self._span = (start, end, found)
        return found

    def select(self, rating_group: int | None, service_identifier: int | None, destination: str, at: float) -> Tariff:
        current = self.in_force(at)
        if current is not self._chosen_among:
            # Another span: the choices made so far were among other tariffs.
            self._chosen = {}
            self._chosen_among = current
            self._banded = any(t.band_start_minute is not None for t in current)
        minute = int(at // 60) % MINUTES_PER_DAY if self._banded else -1
        key = (rating_group, service_identifier, destination, minute)
        chosen = self._chosen
        if key in chosen:
            found = chosen[key]
        else:
            candidates = [t for t in current if t.matches(rating_group, service_identifier, destination, at)]
            found = max(candidates, key=lambda t: (t.specificity(), t.effective_from, t.id)) if candidates else None
            if len(chosen) >= _CHOSEN_LIMIT:
                chosen.clear()
            chosen[key] = found
        if found is None:
            raise RatingError(
                f"no tariff for rating group {rating_group}, service {service_identifier}, destination {destination!r}"
            )
        return found


def destination_digits(address: str | None) -> str:
    """The digits of a called party (``tel:+34 91...``, ``sip:+3491...@host;user=phone``) for prefix matching."""
    if not address:
        return ""
    user = address
    for scheme in ("tel:", "sip:", "sips:"):
        if user.lower().startswith(scheme):
            user = user[len(scheme) :]
            break
    user = user.split("@", 1)[0].split(";", 1)[0]
    if user.isascii():
        return user.translate(_ASCII_NON_DIGITS)
    return "".join(c for c in user if c.isdigit())


# ISO 4217 currencies whose minor unit is not the hundredth (numeric code -> decimals).
MINOR_UNIT_DECIMALS = {
    48: 3,  # BHD
    152: 0,  # CLP
    352: 0,  # ISK
    368: 3,  # IQD
    392: 0,  # JPY
    400: 3,  # JOD
    410: 0,  # KRW
    414: 3,  # KWD
    434: 3,  # LYD
    512: 3,  # OMR
    704: 0,  # VND
    788: 3,  # TND
}


def minor_decimals(currency: int) -> int:
    return MINOR_UNIT_DECIMALS.get(currency, 2)


def to_minor(value_digits: int, exponent: int, currency: int, round_up: bool) -> int:
    """A Unit-Value (Value-Digits x 10^Exponent currency units, RFC 4006 8.8) in minor units."""
    shift = exponent + minor_decimals(currency)
    if shift >= 0:
        return value_digits * int(10**shift)
    whole, rest = divmod(value_digits, int(10**-shift))
    return whole + 1 if rest and round_up else whole


def unit_value(minor: int, currency: int) -> dict[str, int]:
    """Minor units as the members of a Unit-Value AVP."""
    return {"Value-Digits": minor, "Exponent": -minor_decimals(currency)}
