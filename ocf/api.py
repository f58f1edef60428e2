"""The OCF provisioning API on aiohttp, under ``/ocf/``, described in the OpenAPI document.

Subscribers, accounts (create, top up, block, unblock, unit buckets, history), tariffs,
and what is open (sessions, reservations).  Bodies are validated with pydantic (422 names
the field); an unknown account or subscriber is 404, a contradiction (a name or a
Subscription-Id already taken) is 409.  Every change runs in the OCF's writer thread,
in line with the credit-control requests, and wakes the ASR/RAR sender when it leaves
work for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Connection

from charging.clock import Clock
from charging.db import GroupCommitter
from charging.web import ApiError, OpenApi, query_int, read_model
from ocf import provisioning as p

T = TypeVar("T")

Unit = Literal["time", "octets", "units"]
IdType = Literal["END_USER_E164", "END_USER_IMSI", "END_USER_SIP_URI", "END_USER_NAI", "END_USER_PRIVATE"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccountIn(_Body):
    name: str = Field(min_length=1, max_length=200)
    currency: int = Field(default=978, ge=0, le=999, description="ISO 4217 numeric code")
    balance: int = Field(default=0, ge=0, description="opening balance, minor units")
    credit_limit: int = Field(default=0, ge=0, description="how far below zero the balance may go")
    low_balance_threshold: int | None = Field(default=None, ge=0)


class TopUpIn(_Body):
    amount: int = Field(gt=0, description="minor units")
    note: str = Field(default="top-up", max_length=200)


class BucketIn(_Body):
    unit: Unit
    amount: int = Field(gt=0)
    rating_group: int | None = Field(default=None, ge=0)
    valid_from: float | None = None
    valid_until: float | None = None

    @model_validator(mode="after")
    def _window(self) -> BucketIn:
        if self.valid_from is not None and self.valid_until is not None and self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self


class SubscriptionIdIn(_Body):
    type: IdType
    data: str = Field(min_length=1, max_length=255)


class SubscriberIn(_Body):
    account: str | int = Field(description="account id or name")
    name: str = Field(default="", max_length=200)
    subscription_ids: list[SubscriptionIdIn] = Field(min_length=1)


class TariffIn(_Body):
    name: str = Field(min_length=1, max_length=100)
    unit: Unit
    price: int = Field(ge=0, description="minor units per started increment")
    increment: int = Field(default=1, ge=1, description="units per price step: 1 per second, 60 per minute")
    setup_fee: int = Field(default=0, ge=0)
    minimum_charge: int = Field(default=0, ge=0)
    currency: int = Field(default=978, ge=0, le=999)
    rating_group: int | None = Field(default=None, ge=0)
    service_identifier: int | None = Field(default=None, ge=0)
    destination_prefix: str = Field(default="", max_length=32, pattern=r"^[0-9]*$")
    band_start_minute: int | None = Field(default=None, ge=0, lt=1440, description="minute of the UTC day")
    band_end_minute: int | None = Field(default=None, ge=0, le=1440)
    active: bool = True
    effective_from: float | None = Field(default=None, description="Unix seconds; absent: now")

    @model_validator(mode="after")
    def _band(self) -> TariffIn:
        if (self.band_start_minute is None) != (self.band_end_minute is None):
            raise ValueError("a time band needs both band_start_minute and band_end_minute")
        return self

    def spec(self) -> p.TariffSpec:
        return p.TariffSpec(**self.model_dump())


class OcfApi:
    def __init__(self, committer: GroupCommitter, clock: Clock, on_change: Callable[[], None] | None = None) -> None:
        self.committer = committer
        self.clock = clock
        self.on_change = on_change

    async def _run(self, fn: Callable[[Connection, float], T]) -> T:
        now = self.clock.now()
        try:
            return await self.committer.run(lambda conn: fn(conn, now))
        except p.NotFound as exc:
            raise ApiError(404, "not found", str(exc)) from None
        except p.Conflict as exc:
            raise ApiError(409, "conflict", str(exc)) from None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- handlers -------------------------------------------------------------------------------------
    async def create_account(self, request: web.Request) -> web.Response:
        body = await read_model(request, AccountIn)
        account = await self._run(
            lambda c, now: p.create_account(
                c, body.name, body.currency, now, body.balance, body.credit_limit, body.low_balance_threshold
            )
        )
        return web.json_response(account, status=201)

    async def list_accounts(self, request: web.Request) -> web.Response:
        limit, offset = query_int(request, "limit", 100, 1, 1000), query_int(request, "offset", 0, 0, 10**9)
        return web.json_response(await self._run(lambda c, now: p.list_accounts(c, limit, offset)))

    async def show_account(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        return web.json_response(await self._run(lambda c, now: p.get_account(c, p.find_account(c, ref))))

    async def top_up(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        body = await read_model(request, TopUpIn)
        account = await self._run(lambda c, now: p.top_up(c, p.find_account(c, ref), body.amount, now, body.note))
        self._changed()
        return web.json_response(account)

    async def block(self, request: web.Request) -> web.Response:
        return await self._blocked(request, True)

    async def unblock(self, request: web.Request) -> web.Response:
        return await self._blocked(request, False)

    async def _blocked(self, request: web.Request, blocked: bool) -> web.Response:
        ref = request.match_info["ref"]
        account = await self._run(lambda c, now: p.set_blocked(c, p.find_account(c, ref), blocked, now))
        self._changed()
        return web.json_response(account)

    async def add_bucket(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        b = await read_model(request, BucketIn)
        bucket = await self._run(
            lambda c, now: p.add_bucket(
                c, p.find_account(c, ref), b.unit, b.amount, now, b.rating_group, b.valid_from, b.valid_until
            )
        )
        return web.json_response(bucket, status=201)

    async def history(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        limit = query_int(request, "limit", 100, 1, 1000)
        before = query_int(request, "before", 0, 0, 2**62) or None
        return web.json_response(await self._run(lambda c, now: p.history(c, p.find_account(c, ref), limit, before)))

    async def add_subscriber(self, request: web.Request) -> web.Response:
        body = await read_model(request, SubscriberIn)
        ids = [(p.SUBSCRIPTION_ID_TYPES[s.type], s.data) for s in body.subscription_ids]
        subscriber = await self._run(
            lambda c, now: p.add_subscriber(c, p.find_account(c, body.account), body.name, ids, now)
        )
        return web.json_response(subscriber, status=201)

    async def show_subscriber(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        return web.json_response(await self._run(lambda c, now: p.get_subscriber(c, p.find_subscriber(c, ref))))

    async def add_tariff(self, request: web.Request) -> web.Response:
        body = await read_model(request, TariffIn)
        tariff = await self._run(lambda c, now: p.add_tariff(c, body.spec(), now))
        self._changed()
        return web.json_response(tariff, status=201)

    async def list_tariffs(self, request: web.Request) -> web.Response:
        return web.json_response(await self._run(lambda c, now: p.list_tariffs(c)))

    async def list_sessions(self, request: web.Request) -> web.Response:
        account = request.query.get("account")
        state = request.query.get("state", "open")
        if state not in ("open", "closed", "expired", "aborted"):
            raise ApiError(400, "query parameter state must be open, closed, expired or aborted")
        limit = query_int(request, "limit", 100, 1, 1000)
        return web.json_response(
            await self._run(
                lambda c, now: p.list_sessions(c, p.find_account(c, account) if account else None, state, limit)
            )
        )

    async def list_reservations(self, request: web.Request) -> web.Response:
        account = request.query.get("account")
        limit = query_int(request, "limit", 100, 1, 1000)
        return web.json_response(
            await self._run(
                lambda c, now: p.list_reservations(c, p.find_account(c, account) if account else None, limit)
            )
        )

    # -- mounting ------------------------------------------------------------------------------------------
    def add_routes(self, app: web.Application, spec: OpenApi) -> None:
        routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]], str, Any, int]] = [
            ("POST", "/ocf/accounts", self.create_account, "Create an account", AccountIn, 201),
            ("GET", "/ocf/accounts", self.list_accounts, "List accounts (limit, offset)", None, 200),
            ("GET", "/ocf/accounts/{ref}", self.show_account, "An account by id or name, with buckets", None, 200),
            ("POST", "/ocf/accounts/{ref}/topup", self.top_up, "Top up; dry sessions get RAR", TopUpIn, 200),
            ("POST", "/ocf/accounts/{ref}/block", self.block, "Block; open sessions get ASR", None, 200),
            ("POST", "/ocf/accounts/{ref}/unblock", self.unblock, "Unblock", None, 200),
            ("POST", "/ocf/accounts/{ref}/buckets", self.add_bucket, "Add a unit bucket", BucketIn, 201),
            ("GET", "/ocf/accounts/{ref}/history", self.history, "The ledger, newest first (limit, before)", None, 200),
            ("POST", "/ocf/subscribers", self.add_subscriber, "Add a subscriber", SubscriberIn, 201),
            ("GET", "/ocf/subscribers/{ref}", self.show_subscriber, "A subscriber by id or identity", None, 200),
            ("POST", "/ocf/tariffs", self.add_tariff, "Add a tariff version", TariffIn, 201),
            ("GET", "/ocf/tariffs", self.list_tariffs, "Every tariff version", None, 200),
            ("GET", "/ocf/sessions", self.list_sessions, "Sessions (account, state, limit)", None, 200),
            ("GET", "/ocf/reservations", self.list_reservations, "Reservations held (account, limit)", None, 200),
        ]
        for method, path, handler, summary, model, status in routes:
            app.router.add_route(method, path, handler)
            operation: dict[str, Any] = {
                "summary": summary,
                "tags": ["ocf"],
                "responses": {
                    str(status): {"description": "done", "content": {"application/json": {}}},
                    "404": {"description": "no such account, subscriber or tariff"},
                    "409": {"description": "conflicts with what exists"},
                    "422": {"description": "invalid body; names the field"},
                },
            }
            if "{ref}" in path:
                operation["parameters"] = [
                    {"name": "ref", "in": "path", "required": True, "schema": {"type": "string"}}
                ]
            if model is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": spec.add_model(model)}},
                }
            spec.add(path, method, operation)
