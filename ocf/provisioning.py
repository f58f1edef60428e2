"""Provisioning units of work: subscribers, accounts, top-ups, blocking, tariffs, and what is open.

Plain functions of a Connection, shared by the REST API (through the committer) and the
``charging ocf`` commands (in a transaction of their own).  Changes that concern open
sessions leave a note on them (``pending_action``): blocking asks for ASR, a top-up or a
tariff change for RAR; the teardown loop of whichever OCF holds the client's connection
sends them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from ocf import models as m
from ocf.store import lock_accounts, quotas_of

SUBSCRIPTION_ID_TYPES = {
    "END_USER_E164": 0,
    "END_USER_IMSI": 1,
    "END_USER_SIP_URI": 2,
    "END_USER_NAI": 3,
    "END_USER_PRIVATE": 4,
}
SUBSCRIPTION_ID_NAMES = {v: k for k, v in SUBSCRIPTION_ID_TYPES.items()}


class NotFound(LookupError):
    """The named subscriber, account or tariff does not exist (HTTP 404, exit status 2)."""


class Conflict(ValueError):
    """The request contradicts what exists (HTTP 409, exit status 2)."""


@dataclass(frozen=True, slots=True)
class TariffSpec:
    name: str
    unit: str
    price: int
    increment: int = 1
    setup_fee: int = 0
    minimum_charge: int = 0
    currency: int = 978
    rating_group: int | None = None
    service_identifier: int | None = None
    destination_prefix: str = ""
    band_start_minute: int | None = None
    band_end_minute: int | None = None
    active: bool = True
    effective_from: float | None = None  # None: from now


def _row(row: Any) -> dict[str, Any]:
    return dict(row._mapping)


def account_view(row: Any) -> dict[str, Any]:
    data = _row(row)
    data["blocked"] = bool(data["blocked"])
    data["available"] = data["balance"] + data["credit_limit"] - data["reserved"]
    return data


def create_account(
    conn: Connection,
    name: str,
    currency: int,
    now: float,
    balance: int = 0,
    credit_limit: int = 0,
    low_balance_threshold: int | None = None,
) -> dict[str, Any]:
    if conn.execute(select(m.accounts.c.id).where(m.accounts.c.name == name)).first() is not None:
        raise Conflict(f"an account named {name!r} exists")
    account_id = conn.execute(
        insert(m.accounts)
        .values(
            name=name,
            currency=currency,
            balance=balance,
            reserved=0,
            credit_limit=credit_limit,
            blocked=False,
            low_balance_threshold=low_balance_threshold,
            created_at=now,
            updated_at=now,
        )
        .returning(m.accounts.c.id)
    ).scalar_one()
    if balance:
        _ledger(conn, account_id, now, "topup", balance, balance, "opening balance")
    return get_account(conn, account_id)


def find_account(conn: Connection, ref: str | int) -> int:
    """An account by id or by name."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        found = conn.execute(select(m.accounts.c.id).where(m.accounts.c.id == int(ref))).scalar()
        if found is not None:
            return int(found)
    found = conn.execute(select(m.accounts.c.id).where(m.accounts.c.name == str(ref))).scalar()
    if found is None:
        raise NotFound(f"no account {ref}")
    return int(found)


def get_account(conn: Connection, account_id: int) -> dict[str, Any]:
    row = conn.execute(select(m.accounts).where(m.accounts.c.id == account_id)).first()
    if row is None:
        raise NotFound(f"no account {account_id}")
    view = account_view(row)
    view["buckets"] = [
        _row(b)
        for b in conn.execute(select(m.buckets).where(m.buckets.c.account_id == account_id).order_by(m.buckets.c.id))
    ]
    view["open_sessions"] = (
        conn.execute(
            select(m.sessions.c.session_id).where(m.sessions.c.account_id == account_id, m.sessions.c.state == "open")
        )
        .scalars()
        .all()
    )
    return view


def list_accounts(conn: Connection, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    rows = conn.execute(select(m.accounts).order_by(m.accounts.c.id).limit(limit).offset(offset))
    return [account_view(row) for row in rows]


def add_subscriber(
    conn: Connection, account_id: int, name: str, identities: Iterable[tuple[int, str]], now: float
) -> dict[str, Any]:
    if conn.execute(select(m.accounts.c.id).where(m.accounts.c.id == account_id)).first() is None:
        raise NotFound(f"no account {account_id}")
    identities = list(identities)
    if not identities:
        raise Conflict("a subscriber needs at least one Subscription-Id")
    for id_type, id_data in identities:
        taken = conn.execute(
            select(m.subscription_ids.c.subscriber_id).where(
                m.subscription_ids.c.id_type == id_type, m.subscription_ids.c.id_data == id_data
            )
        ).first()
        if taken is not None:
            raise Conflict(f"{SUBSCRIPTION_ID_NAMES.get(id_type, id_type)} {id_data} belongs to subscriber {taken[0]}")
    subscriber_id = conn.execute(
        insert(m.subscribers).values(account_id=account_id, name=name, created_at=now).returning(m.subscribers.c.id)
    ).scalar_one()
    try:
        conn.execute(
            insert(m.subscription_ids),
            [{"id_type": t, "id_data": d, "subscriber_id": subscriber_id} for t, d in identities],
        )
    except IntegrityError:
        raise Conflict("a Subscription-Id is given twice") from None
    return get_subscriber(conn, subscriber_id)


def get_subscriber(conn: Connection, subscriber_id: int) -> dict[str, Any]:
    row = conn.execute(select(m.subscribers).where(m.subscribers.c.id == subscriber_id)).first()
    if row is None:
        raise NotFound(f"no subscriber {subscriber_id}")
    view = _row(row)
    view["subscription_ids"] = [
        {"type": SUBSCRIPTION_ID_NAMES.get(r.id_type, str(r.id_type)), "data": r.id_data}
        for r in conn.execute(select(m.subscription_ids).where(m.subscription_ids.c.subscriber_id == subscriber_id))
    ]
    return view


def find_subscriber(conn: Connection, ref: str) -> int:
    """A subscriber by id, or by any of its Subscription-Id data."""
    if ref.isdigit():
        found = conn.execute(select(m.subscribers.c.id).where(m.subscribers.c.id == int(ref))).scalar()
        if found is not None:
            return int(found)
    found = conn.execute(select(m.subscription_ids.c.subscriber_id).where(m.subscription_ids.c.id_data == ref)).scalar()
    if found is None:
        raise NotFound(f"no subscriber {ref}")
    return int(found)


def _ledger(
    conn: Connection, account_id: int, now: float, kind: str, amount: int, balance_after: int, note: str
) -> None:
    conn.execute(
        insert(m.transactions).values(
            account_id=account_id,
            at=now,
            kind=kind,
            amount=amount,
            balance_after=balance_after,
            uncollected=0,
            note=note,
        )
    )


def _mark(conn: Connection, session_ids: list[str], action: str, now: float) -> None:
    if session_ids:
        conn.execute(
            update(m.sessions)
            .where(m.sessions.c.session_id.in_(session_ids))
            .values(pending_action=action, action_sent_at=None, updated_at=now)
        )


def top_up(conn: Connection, account_id: int, amount: int, now: float, note: str = "top-up") -> dict[str, Any]:
    """Credit the account; open sessions that ran dry or hold final units are asked to re-authorise (RAR)."""
    if amount <= 0:
        raise Conflict("a top-up must be positive")
    account = lock_accounts(conn, [account_id]).get(account_id)
    if account is None:
        raise NotFound(f"no account {account_id}")
    balance = account.balance + amount
    conn.execute(update(m.accounts).where(m.accounts.c.id == account_id).values(balance=balance, updated_at=now))
    _ledger(conn, account_id, now, "topup", amount, balance, note)
    rows = conn.execute(
        select(m.sessions.c.session_id, m.sessions.c.quotas).where(
            m.sessions.c.account_id == account_id, m.sessions.c.state == "open"
        )
    ).all()
    reauth = []
    for row in rows:
        quotas = quotas_of(row.quotas).values()
        if not any(q.granted for q in quotas) or any(q.final for q in quotas):
            reauth.append(row.session_id)
    _mark(conn, reauth, "reauth", now)
    return get_account(conn, account_id)


def set_blocked(conn: Connection, account_id: int, blocked: bool, now: float) -> dict[str, Any]:
    """Block (every open session gets ASR) or unblock an account."""
    if account_id not in lock_accounts(conn, [account_id]):
        raise NotFound(f"no account {account_id}")
    conn.execute(update(m.accounts).where(m.accounts.c.id == account_id).values(blocked=blocked, updated_at=now))
    if blocked:
        open_ids = (
            conn.execute(
                select(m.sessions.c.session_id).where(
                    m.sessions.c.account_id == account_id, m.sessions.c.state == "open"
                )
            )
            .scalars()
            .all()
        )
        _mark(conn, list(open_ids), "abort", now)
    return get_account(conn, account_id)


def add_bucket(
    conn: Connection,
    account_id: int,
    unit: str,
    amount: int,
    now: float,
    rating_group: int | None = None,
    valid_from: float | None = None,
    valid_until: float | None = None,
) -> dict[str, Any]:
    if account_id not in lock_accounts(conn, [account_id]):
        raise NotFound(f"no account {account_id}")
    bucket_id = conn.execute(
        insert(m.buckets)
        .values(
            account_id=account_id,
            unit=unit,
            rating_group=rating_group,
            amount=amount,
            reserved=0,
            valid_from=now if valid_from is None else valid_from,
            valid_until=valid_until,
            created_at=now,
        )
        .returning(m.buckets.c.id)
    ).scalar_one()
    conn.execute(
        insert(m.transactions).values(
            account_id=account_id,
            at=now,
            kind="bucket",
            amount=0,
            balance_after=conn.execute(select(m.accounts.c.balance).where(m.accounts.c.id == account_id)).scalar_one(),
            units=amount,
            unit=unit,
            bucket_id=bucket_id,
            uncollected=0,
            rating_group=rating_group,
            note="bucket added",
        )
    )
    return _row(conn.execute(select(m.buckets).where(m.buckets.c.id == bucket_id)).one())


def add_tariff(conn: Connection, spec: TariffSpec, now: float) -> dict[str, Any]:
    """A new tariff version; when it applies at once, the open sessions it prices are asked to re-authorise."""
    effective = now if spec.effective_from is None else spec.effective_from
    tariff_id = conn.execute(
        insert(m.tariffs)
        .values(
            name=spec.name,
            rating_group=spec.rating_group,
            service_identifier=spec.service_identifier,
            destination_prefix=spec.destination_prefix,
            band_start_minute=spec.band_start_minute,
            band_end_minute=spec.band_end_minute,
            unit=spec.unit,
            price=spec.price,
            increment=spec.increment,
            setup_fee=spec.setup_fee,
            minimum_charge=spec.minimum_charge,
            currency=spec.currency,
            active=spec.active,
            effective_from=effective,
            created_at=now,
        )
        .returning(m.tariffs.c.id)
    ).scalar_one()
    if effective <= now:
        reauth_for_tariffs(conn, [(spec.rating_group, spec.service_identifier)], now)
    return _row(conn.execute(select(m.tariffs).where(m.tariffs.c.id == tariff_id)).one())


def reauth_for_tariffs(conn: Connection, keys: Iterable[tuple[int | None, int | None]], now: float) -> int:
    """Ask for RAR on the open sessions holding quota that a changed tariff key prices."""
    keys = list(keys)
    rows = conn.execute(
        select(m.sessions.c.session_id, m.sessions.c.quotas).where(
            m.sessions.c.state == "open", m.sessions.c.pending_action.is_(None)
        )
    ).all()
    hit = []
    for row in rows:
        for quota in quotas_of(row.quotas).values():
            if any(
                (rg is None or rg == quota.rating_group) and (si is None or si == quota.service_identifier)
                for rg, si in keys
            ):
                hit.append(row.session_id)
                break
    _mark(conn, hit, "reauth", now)
    return len(hit)


def tariffs_effective_between(conn: Connection, after: float, until: float) -> list[tuple[int | None, int | None]]:
    """Keys of tariff versions that take effect in (after, until]: the sweeper re-authorises their sessions."""
    rows = conn.execute(
        select(m.tariffs.c.rating_group, m.tariffs.c.service_identifier).where(
            m.tariffs.c.effective_from > after, m.tariffs.c.effective_from <= until, m.tariffs.c.created_at <= after
        )
    )
    return [(row.rating_group, row.service_identifier) for row in rows]


def list_tariffs(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(select(m.tariffs).order_by(m.tariffs.c.effective_from, m.tariffs.c.id))
    return [{**_row(row), "active": bool(row.active)} for row in rows]


def list_sessions(
    conn: Connection, account_id: int | None = None, state: str = "open", limit: int = 100
) -> list[dict[str, Any]]:
    query = select(m.sessions).where(m.sessions.c.state == state)
    if account_id is not None:
        query = query.where(m.sessions.c.account_id == account_id)
    rows = conn.execute(query.order_by(m.sessions.c.created_at).limit(limit))
    out = []
    for row in rows:
        view = _row(row)
        view["quotas"] = [q.to_json() for q in quotas_of(row.quotas).values()]
        out.append(view)
    return out


def list_reservations(conn: Connection, account_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Every quota an open session holds: units granted and not reported, and the money or bucket behind them."""
    out = []
    for session in list_sessions(conn, account_id, "open", limit):
        for quota in session["quotas"]:
            if quota["granted"]:
                out.append(
                    {
                        "session_id": session["session_id"],
                        "account_id": session["account_id"],
                        "origin_host": session["origin_host"],
                        "rating_group": quota["rg"],
                        "service_identifier": quota["si"],
                        "unit": quota["unit"],
                        "granted": quota["granted"],
                        "money": quota["money"],
                        "bucket_id": quota["bucket"],
                        "expires_at": session["expires_at"],
                    }
                )
    return out


def history(conn: Connection, account_id: int, limit: int = 100, before_id: int | None = None) -> list[dict[str, Any]]:
    """The account's ledger, newest first."""
    query = select(m.transactions).where(m.transactions.c.account_id == account_id)
    if before_id is not None:
        query = query.where(m.transactions.c.id < before_id)
    rows = conn.execute(query.order_by(m.transactions.c.id.desc()).limit(limit))
    return [_row(row) for row in rows]
