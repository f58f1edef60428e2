"""Accounts, the subscriber identities that belong to them, and versioned tariff plans.

A tariff correction never edits a stored version: it adds a version with its own
``effective_from``; a CDR is rated with the newest version effective at its start.
Rerating a period after a correction applies the new version to stored CDRs.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Connection, func, select

from billing import models
from billing.cycles import BillCycle, CycleKind
from billing.rating import TariffPlan
from billing.settings import TaxSetting


class CatalogError(ValueError):
    """A request the catalog refuses; the message says which value and why."""


class CatalogConflict(CatalogError):
    """The request contradicts what is stored (a name or an identity taken already)."""


class CatalogNotFound(CatalogError):
    """The request names something that does not exist."""


class AccountSpec(BaseModel):
    """A new account as the API and the CLI take it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    currency: str | None = Field(default=None, min_length=3, max_length=3)
    tariff_plan: str | None = Field(default=None, max_length=64)
    cycle_kind: CycleKind = "monthly"
    cycle_day: int = 1
    time_zone: str | None = None
    taxes: list[TaxSetting] | None = None
    subscribers: list[str] = Field(default_factory=list)

    @field_validator("currency")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value.upper() if value else value


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str
    currency: str
    tariff_plan: str | None
    cycle: BillCycle
    taxes: tuple[TaxSetting, ...]
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "currency": self.currency,
            "tariff_plan": self.tariff_plan,
            "cycle_kind": self.cycle.kind,
            "cycle_day": self.cycle.day,
            "time_zone": self.cycle.time_zone,
            "taxes": [tax.model_dump() for tax in self.taxes],
            "created_at": self.created_at.isoformat(),
        }


def account_from_row(row: Any) -> Account:
    return Account(
        id=row.id,
        name=row.name,
        currency=row.currency,
        tariff_plan=row.tariff_plan,
        cycle=BillCycle(row.cycle_kind, row.cycle_day, row.time_zone),
        taxes=tuple(TaxSetting.model_validate(tax) for tax in row.taxes),
        created_at=row.created_at,
    )


def normalize_identity(identity: str) -> str:
    """The form subscriber identities are stored and looked up in.

    ``sip:``/``sips:``: scheme and host in lower case, URI parameters dropped (the user part
    is case-sensitive, RFC 3261 19.1.4); ``tel:``: visual separators and parameters dropped.
    """
    value = identity.strip()
    scheme, sep, rest = value.partition(":")
    if not sep:
        return value
    scheme = scheme.lower()
    if scheme in ("sip", "sips"):
        rest = rest.split(";", 1)[0].split("?", 1)[0]
        user, at, host = rest.rpartition("@")
        return f"{scheme}:{user}{at}{host.lower()}" if at else f"{scheme}:{host.lower()}"
    if scheme == "tel":
        number = rest.split(";", 1)[0]
        return "tel:" + "".join(ch for ch in number if ch not in " -.()")
    return f"{scheme}:{rest}"


def create_account(
    conn: Connection,
    spec: AccountSpec,
    *,
    now: datetime,
    default_currency: str,
    default_time_zone: str,
    default_taxes: list[TaxSetting],
) -> Account:
    try:
        cycle = BillCycle(spec.cycle_kind, spec.cycle_day, spec.time_zone or default_time_zone)
    except ValueError as exc:
        raise CatalogError(str(exc)) from None
    if conn.execute(select(models.accounts.c.id).where(models.accounts.c.name == spec.name)).first():
        raise CatalogConflict(f"an account named {spec.name!r} exists already")
    taxes = spec.taxes if spec.taxes is not None else default_taxes
    account_id = conn.execute(
        models.accounts.insert()
        .values(
            name=spec.name,
            currency=spec.currency or default_currency,
            tariff_plan=spec.tariff_plan,
            cycle_kind=cycle.kind,
            cycle_day=cycle.day,
            time_zone=cycle.time_zone,
            taxes=[tax.model_dump() for tax in taxes],
            created_at=now,
        )
        .returning(models.accounts.c.id)
    ).scalar_one()
    for identity in spec.subscribers:
        add_subscriber(conn, account_id, identity, now=now)
    return get_account(conn, account_id)


def get_account(conn: Connection, account_id: int) -> Account:
    row = conn.execute(select(models.accounts).where(models.accounts.c.id == account_id)).first()
    if row is None:
        raise CatalogNotFound(f"no account {account_id}")
    return account_from_row(row)


def find_account(conn: Connection, name_or_id: str) -> Account:
    """An account by name, or by number when the text is all digits and no account has that name."""
    row = conn.execute(select(models.accounts).where(models.accounts.c.name == name_or_id)).first()
    if row is None and name_or_id.isdigit():
        row = conn.execute(select(models.accounts).where(models.accounts.c.id == int(name_or_id))).first()
    if row is None:
        raise CatalogNotFound(f"no account {name_or_id!r}")
    return account_from_row(row)


def accounts_by_id(conn: Connection, ids: set[int]) -> dict[int, Account]:
    if not ids:
        return {}
    rows = conn.execute(select(models.accounts).where(models.accounts.c.id.in_(sorted(ids))))
    return {row.id: account_from_row(row) for row in rows}


def add_subscriber(conn: Connection, account_id: int, identity: str, *, now: datetime) -> str:
    normalized = normalize_identity(identity)
    if ":" not in normalized or normalized.endswith(":"):
        raise CatalogError(f"subscriber identity {identity!r} is not a sip:, sips: or tel: URI")
    get_account(conn, account_id)
    owner = conn.execute(
        select(models.subscribers.c.account_id).where(models.subscribers.c.identity == normalized)
    ).scalar_one_or_none()
    if owner is not None:
        if owner == account_id:
            return normalized
        raise CatalogConflict(f"subscriber {normalized} belongs to account {owner} already")
    conn.execute(models.subscribers.insert().values(identity=normalized, account_id=account_id, created_at=now))
    return normalized


def subscribers_of(conn: Connection, account_id: int) -> list[str]:
    rows = conn.execute(
        select(models.subscribers.c.identity)
        .where(models.subscribers.c.account_id == account_id)
        .order_by(models.subscribers.c.identity)
    )
    return [row.identity for row in rows]


def owners_of(conn: Connection, identities: set[str]) -> dict[str, int]:
    """Normalised identity -> account id, for those identities that belong to an account."""
    if not identities:
        return {}
    rows = conn.execute(
        select(models.subscribers.c.identity, models.subscribers.c.account_id).where(
            models.subscribers.c.identity.in_(sorted(identities))
        )
    )
    return {row.identity: row.account_id for row in rows}


def set_tariff(
    conn: Connection, plan_name: str, plan: TariffPlan, *, effective_from: datetime, now: datetime, note: str = ""
) -> int:
    """Store ``plan`` as the next version of ``plan_name``; returns the version number."""
    if not plan_name or len(plan_name) > 64:
        raise CatalogError("a tariff plan name has 1 to 64 characters")
    last = conn.execute(
        select(func.max(models.tariff_versions.c.version)).where(models.tariff_versions.c.plan == plan_name)
    ).scalar_one_or_none()
    version = (last or 0) + 1
    conn.execute(
        models.tariff_versions.insert().values(
            plan=plan_name,
            version=version,
            effective_from=effective_from,
            document=plan.model_dump(mode="json"),
            note=note[:200],
            created_at=now,
        )
    )
    return version


@dataclass(frozen=True, slots=True)
class PlanVersion:
    id: int
    plan_name: str
    version: int
    effective_from: datetime
    plan: TariffPlan


@dataclass(slots=True)
class PlanBook:
    """Tariff versions by plan, read once per transaction; parsed plans are kept across transactions
    because a stored version never changes (its id names its content), so only the versions' keys are
    read again, and a document only the first time its version is seen."""

    _parsed: dict[int, TariffPlan] = field(default_factory=dict)

    def load(self, conn: Connection, plan_names: set[str]) -> PlanIndex:
        if not plan_names:
            return PlanIndex({})
        table = models.tariff_versions
        rows = conn.execute(
            select(table.c.id, table.c.plan, table.c.version, table.c.effective_from)
            .where(table.c.plan.in_(sorted(plan_names)))
            .order_by(table.c.plan, table.c.effective_from, table.c.version)
        ).all()
        unseen = [row.id for row in rows if row.id not in self._parsed]
        if unseen:
            documents = conn.execute(select(table.c.id, table.c.document).where(table.c.id.in_(unseen)))
            for version_id, document in documents:
                self._parsed[version_id] = TariffPlan.model_validate(document)
        by_plan: dict[str, list[PlanVersion]] = {}
        for row in rows:
            by_plan.setdefault(row.plan, []).append(
                PlanVersion(row.id, row.plan, row.version, row.effective_from, self._parsed[row.id])
            )
        return PlanIndex(by_plan)


@dataclass(frozen=True, slots=True)
class PlanIndex:
    by_plan: dict[str, list[PlanVersion]]  # each list sorted by effective_from, then version
    _starts: dict[str, list[datetime]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        starts = {name: [v.effective_from for v in versions] for name, versions in self.by_plan.items()}
        object.__setattr__(self, "_starts", starts)

    def effective(self, plan_name: str | None, instant: datetime) -> PlanVersion | None:
        """The version in force at ``instant``: the latest effective_from at or before it (the higher
        version wins a tie, so a correction effective from the same instant replaces the original)."""
        if plan_name is None:
            return None
        versions = self.by_plan.get(plan_name)
        if not versions:
            return None
        index = bisect.bisect_right(self._starts[plan_name], instant)
        return versions[index - 1] if index else None


def tariff_versions(conn: Connection, plan_name: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(models.tariff_versions)
        .where(models.tariff_versions.c.plan == plan_name)
        .order_by(models.tariff_versions.c.version)
    )
    return [
        {
            "plan": row.plan,
            "version": row.version,
            "effective_from": row.effective_from.isoformat(),
            "note": row.note,
            "document": row.document,
        }
        for row in rows
    ]
