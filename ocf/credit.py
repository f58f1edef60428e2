"""Reservation arithmetic on plain dataclasses: quota sizing, reserving, debiting, releasing.  No I/O.

The invariant every function here keeps: an account's ``reserved`` never exceeds
``balance + credit_limit``, and a debit never takes the balance below ``-credit_limit``.
Usage beyond what was reserved is debited only as far as the free credit reaches; the
rest is reported as uncollected rather than taken from another session's reservation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ocf.rating import UNIT_MONEY, Tariff


@dataclass(slots=True)
class Account:
    id: int
    currency: int
    balance: int
    reserved: int = 0
    credit_limit: int = 0
    blocked: bool = False
    low_balance_threshold: int | None = None

    @property
    def free(self) -> int:
        """Money neither debited nor held by a reservation."""
        return self.balance + self.credit_limit - self.reserved


@dataclass(slots=True)
class Bucket:
    id: int
    account_id: int
    unit: str
    amount: int
    reserved: int = 0
    rating_group: int | None = None
    valid_from: float = 0.0
    valid_until: float | None = None

    @property
    def free(self) -> int:
        return self.amount - self.reserved

    def usable(self, unit: str, rating_group: int | None, now: float) -> bool:
        return (
            self.unit == unit
            and (self.rating_group is None or self.rating_group == rating_group)
            and self.valid_from <= now
            and (self.valid_until is None or now < self.valid_until)
            and self.free > 0
        )


@dataclass(slots=True)
class Quota:
    """The credit one rating group (or service) of a session holds, and what it used so far."""

    rating_group: int | None
    service_identifier: int | None
    unit: str
    granted: int = 0  # units granted and not yet reported
    money: int = 0  # money reserved for them
    bucket_id: int | None = None  # the bucket that funds the grant instead of money
    tariff_id: int | None = None  # the tariff of the current charging segment
    used: int = 0  # units reported in the current segment
    charged: int = 0  # money debited for them
    setup_in_segment: bool = True  # whether this segment's charge includes the set-up fee
    final: bool = False  # the last grant carried Final-Unit-Indication

    def to_json(self) -> dict[str, Any]:
        return {
            "rg": self.rating_group,
            "si": self.service_identifier,
            "unit": self.unit,
            "granted": self.granted,
            "money": self.money,
            "bucket": self.bucket_id,
            "tariff": self.tariff_id,
            "used": self.used,
            "charged": self.charged,
            "setup": self.setup_in_segment,
            "final": self.final,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Quota:
        return cls(
            rating_group=data["rg"],
            service_identifier=data["si"],
            unit=data["unit"],
            granted=data["granted"],
            money=data["money"],
            bucket_id=data["bucket"],
            tariff_id=data["tariff"],
            used=data["used"],
            charged=data["charged"],
            setup_in_segment=data["setup"],
            final=data["final"],
        )


def quota_key(rating_group: int | None, service_identifier: int | None) -> str:
    """Quotas are held per rating group when there is one, else per service (RFC 4006 5.1.2)."""
    if rating_group is not None:
        return f"rg:{rating_group}"
    if service_identifier is not None:
        return f"si:{service_identifier}"
    return "session"


def size_request(requested: int | None, default: int) -> int:
    """Units to try to grant: what was asked for, at most the configured grant; the grant when nothing was asked."""
    if requested is None or requested <= 0:
        return default
    return min(requested, default)


@dataclass(slots=True)
class Grant:
    units: int
    money: int
    bucket_id: int | None
    final: bool


@dataclass(slots=True)
class Settlement:
    units: int  # units reported used
    debited: int  # money taken from the balance
    uncollected: int  # cost the account could not cover
    bucket_units: int  # units taken from a bucket
    bucket_id: int | None


def _cost(tariff: Tariff | None, quota: Quota, more: int) -> int:
    if tariff is None:  # money is its own price
        return more
    return tariff.extra_cost(quota.used, more, quota.setup_in_segment)


def _affordable(tariff: Tariff | None, quota: Quota, used: int, money: int, cap: int) -> int:
    if tariff is None:
        return max(0, min(cap, money))
    return tariff.affordable(used, money, cap, quota.setup_in_segment)


def pick_bucket(buckets: list[Bucket], unit: str, rating_group: int | None, now: float) -> Bucket | None:
    """The usable bucket that expires first (buckets without an end last)."""
    usable = [b for b in buckets if b.usable(unit, rating_group, now)]
    if not usable:
        return None
    return min(usable, key=lambda b: (b.valid_until is None, b.valid_until or 0.0, b.id))


def reserve(
    account: Account,
    buckets: list[Bucket],
    quota: Quota,
    tariff: Tariff | None,
    want: int,
    now: float,
) -> Grant:
    """Reserve up to ``want`` units for ``quota``: from a bucket of its unit if one has room, else money.

    The grant is final (Final-Unit-Indication) when, after it, neither a bucket nor the
    free money could fund one more unit.
    """
    bucket = pick_bucket(buckets, quota.unit, quota.rating_group, now) if quota.unit != UNIT_MONEY else None
    if bucket is not None:
        units = min(want, bucket.free)
        bucket.reserved += units
        grant = Grant(units, 0, bucket.id, False)
    else:
        units = _affordable(tariff, quota, quota.used, account.free, want)
        money = _cost(tariff, quota, units)
        account.reserved += money
        grant = Grant(units, money, None, False)
    quota.granted = grant.units
    quota.money = grant.money
    quota.bucket_id = grant.bucket_id
    more_from_bucket = pick_bucket(buckets, quota.unit, quota.rating_group, now) if quota.unit != UNIT_MONEY else None
    more_from_money = _affordable(tariff, quota, quota.used + grant.units, account.free, 1)
    grant.final = grant.units > 0 and more_from_bucket is None and more_from_money == 0
    quota.final = grant.final
    return grant


def release(account: Account, buckets: list[Bucket], quota: Quota) -> None:
    """Give back what ``quota`` holds, without debiting anything."""
    account.reserved -= quota.money
    if quota.bucket_id is not None:
        for bucket in buckets:
            if bucket.id == quota.bucket_id:
                bucket.reserved -= quota.granted
                break
    quota.granted = 0
    quota.money = 0
    quota.bucket_id = None


def settle(account: Account, buckets: list[Bucket], quota: Quota, tariff: Tariff | None, used: int) -> Settlement:
    """Debit ``used`` units of ``quota`` and release the rest of its reservation.

    Units a bucket reserved come from that bucket (and from its free units beyond the
    reservation); what no bucket covers is priced with the tariff and taken from the
    quota's own money plus the account's free credit, never beyond.
    """
    used = max(0, used)
    bucket_id = quota.bucket_id
    bucket = next((b for b in buckets if b.id == bucket_id), None) if bucket_id is not None else None
    release(account, buckets, quota)
    from_bucket = 0
    if bucket is not None:
        from_bucket = min(used, max(0, bucket.free))
        bucket.amount -= from_bucket
    rest = used - from_bucket
    cost = _cost(tariff, quota, rest) if rest else 0
    debited = min(cost, max(0, account.free))
    account.balance -= debited
    quota.used += rest
    quota.charged += debited
    return Settlement(used, debited, cost - debited, from_bucket, bucket_id if from_bucket else None)


def start_segment(quota: Quota, tariff: Tariff | None) -> None:
    """A new tariff applies from now: rounding restarts and the set-up fee is not charged again."""
    if tariff is None or quota.tariff_id == tariff.id:
        return
    if quota.used or quota.charged:
        quota.setup_in_segment = False
    quota.used = 0
    quota.charged = 0
    quota.tariff_id = tariff.id


def threshold(granted: int, percent: int) -> int:
    """Units left when the client should report early (TS 32.299 Time/Volume/Unit-Quota-Threshold)."""
    return granted * percent // 100 if percent else 0


@dataclass(slots=True)
class Session:
    session_id: str
    account_id: int
    subscriber_id: int
    origin_host: str
    origin_realm: str
    service_context: str
    destination: str
    state: str = "open"
    request_number: int = 0
    quotas: dict[str, Quota] = field(default_factory=dict)
    cost: int = 0
    pending_action: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    expires_at: float = 0.0
    closed_at: float | None = None
    is_new: bool = False

    @property
    def reserved(self) -> int:
        return sum(q.money for q in self.quotas.values())

    @property
    def holds_units(self) -> bool:
        return any(q.granted for q in self.quotas.values())
