"""The billing REST API (aiohttp, under /billing/) and the page (under /ui/billing).

Reads take a ``read`` or ``admin`` bearer token, writes an ``admin`` token (charging.web).
Lists are paginated by ``limit`` and an opaque ``cursor`` (the ``next_cursor`` of the page
before).  Times in queries are ISO 8601 with an offset (``2026-03-01T00:00:00Z``), days are
``YYYY-MM-DD``.  Database work runs in worker threads so the event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, Engine, func, select

from billing import models
from billing.catalog import (
    AccountSpec,
    CatalogConflict,
    CatalogError,
    CatalogNotFound,
    account_from_row,
    add_subscriber,
    create_account,
    get_account,
    set_tariff,
    subscribers_of,
    tariff_versions,
)
from billing.feed import HEARTBEAT, HEARTBEAT_SECONDS, FeedHub, cdrs_after, last_cdr_row_id, sse_event
from billing.ingest import feed_item
from billing.invoicing import InvoiceError, export_csv, export_json, invoice_document
from billing.rating import TariffPlan
from billing.settings import BillingSettings
from charging.clock import Clock, utc
from charging.web import ApiError, OpenApi, query_int, read_model

log = logging.getLogger("charging.billing")

STATIC = Path(__file__).resolve().parent / "static"
T = TypeVar("T")


class SubscriberBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identity: str = Field(min_length=4, max_length=255)  # sip:alice@ims.example or tel:+4930...


class TariffBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    effective_from: datetime
    note: str = Field(default="", max_length=200)
    plan: TariffPlan


def _page(items: list[dict[str, Any]], limit: int, key: str = "id") -> dict[str, Any]:
    next_cursor = str(items[-1][key]) if len(items) == limit else None
    return {"items": items, "next_cursor": next_cursor}


def _time_param(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"query parameter {name} must be an ISO 8601 time, e.g. 2026-03-01T00:00:00Z") from None
    if value.tzinfo is None:
        raise ApiError(400, f"query parameter {name} must carry a time zone offset (Z or +01:00)")
    return value


def _day_param(request: web.Request, name: str) -> date | None:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name} must be a day, YYYY-MM-DD") from None


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise ApiError(400, f"query parameter {name} must be a whole number")
    return int(raw)


def _path_id(request: web.Request, name: str = "id") -> int:
    raw = request.match_info[name]
    if not raw.isdigit():
        raise ApiError(400, f"{name} must be a whole number")
    return int(raw)


@dataclass(slots=True)
class BillingApi:
    engine: Engine
    settings: BillingSettings
    clock: Clock
    hub: FeedHub

    async def _read(self, work: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.engine.connect() as conn:
                return work(conn)

        return await asyncio.to_thread(run)

    async def _write(self, work: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.engine.begin() as conn:
                return work(conn)

        try:
            return await asyncio.to_thread(run)
        except CatalogConflict as exc:
            log.info("billing request refused: %s", exc)
            raise ApiError(409, str(exc)) from None
        except CatalogNotFound as exc:
            raise ApiError(404, str(exc)) from None
        except (CatalogError, InvoiceError) as exc:
            log.info("billing request refused: %s", exc)
            raise ApiError(400, str(exc)) from None

    # -- accounts -------------------------------------------------------------------------------------

    async def list_accounts(self, request: web.Request) -> web.Response:
        limit = query_int(request, "limit", 50, 1, 500)
        cursor = _int_param(request, "cursor") or 0
        table = models.accounts

        def work(conn: Connection) -> list[dict[str, Any]]:
            query = select(table).where(table.c.id > cursor).order_by(table.c.id).limit(limit)
            return [account_from_row(row).as_json() for row in conn.execute(query)]

        return web.json_response(_page(await self._read(work), limit))

    async def create_account(self, request: web.Request) -> web.Response:
        spec = await read_model(request, AccountSpec)
        settings = self.settings

        def work(conn: Connection) -> dict[str, Any]:
            account = create_account(
                conn,
                spec,
                now=utc(self.clock.now()),
                default_currency=settings.default_currency,
                default_time_zone=settings.default_time_zone,
                default_taxes=settings.default_taxes,
            )
            return {**account.as_json(), "subscribers": subscribers_of(conn, account.id)}

        created = await self._write(work)
        log.info("account %s created", created["name"])
        return web.json_response(created, status=201)

    async def get_account(self, request: web.Request) -> web.Response:
        account_id = _path_id(request)

        def work(conn: Connection) -> dict[str, Any]:
            try:
                account = get_account(conn, account_id)
            except CatalogError:
                raise ApiError(404, f"no account {account_id}") from None
            return {**account.as_json(), "subscribers": subscribers_of(conn, account.id)}

        return web.json_response(await self._read(work))

    async def add_subscriber(self, request: web.Request) -> web.Response:
        account_id = _path_id(request)
        body = await read_model(request, SubscriberBody)

        def work(conn: Connection) -> str:
            return add_subscriber(conn, account_id, body.identity, now=utc(self.clock.now()))

        identity = await self._write(work)
        return web.json_response({"account_id": account_id, "identity": identity}, status=201)

    async def usage(self, request: web.Request) -> web.Response:
        account_id = _path_id(request)
        first, last = _day_param(request, "from"), _day_param(request, "to")
        table = models.usage_daily

        def work(conn: Connection) -> dict[str, Any]:
            try:
                account = get_account(conn, account_id)
            except CatalogError:
                raise ApiError(404, f"no account {account_id}") from None
            query = select(table).where(table.c.account_id == account_id).order_by(table.c.day, table.c.service)
            if first is not None:
                query = query.where(table.c.day >= first)
            if last is not None:
                query = query.where(table.c.day <= last)
            days: list[dict[str, Any]] = [
                {
                    "day": row.day.isoformat(),
                    "service": row.service,
                    "cdr_count": row.cdr_count,
                    "duration_seconds": round(row.duration_seconds, 3),
                    "octets": row.octets,
                    "amount_minor": row.amount_minor,
                }
                for row in conn.execute(query)
            ]
            totals: dict[str, dict[str, float]] = {}
            for day in days:
                total = totals.setdefault(
                    str(day["service"]), {"cdr_count": 0, "duration_seconds": 0.0, "octets": 0, "amount_minor": 0}
                )
                for key in total:
                    total[key] += day[key]
            return {"account_id": account_id, "currency": account.currency, "days": days, "totals": totals}

        return web.json_response(await self._read(work))

    # -- CDRs -----------------------------------------------------------------------------------------

    async def search_cdrs(self, request: web.Request) -> web.Response:
        limit = query_int(request, "limit", 50, 1, 500)
        cursor = _int_param(request, "cursor")
        account_id = _int_param(request, "account")
        since, until = _time_param(request, "from"), _time_param(request, "to")
        icid, node = request.query.get("icid"), request.query.get("node")
        table = models.cdrs
        query = select(table).order_by(table.c.id.desc()).limit(limit)
        if cursor is not None:
            query = query.where(table.c.id < cursor)
        if account_id is not None:
            query = query.where(table.c.account_id == account_id)
        if icid:
            query = query.where(table.c.icid == icid)
        if node:
            query = query.where(table.c.node_address == node)
        if since is not None:
            query = query.where(table.c.started_at >= since)
        if until is not None:
            query = query.where(table.c.started_at < until)

        def work(conn: Connection) -> list[dict[str, Any]]:
            return [feed_item(row.id, row) for row in conn.execute(query)]

        return web.json_response(_page(await self._read(work), limit))

    async def get_cdr(self, request: web.Request) -> web.Response:
        cdr_id = request.match_info["cdr_id"]
        table, charges = models.cdrs, models.charges

        def work(conn: Connection) -> dict[str, Any]:
            row = conn.execute(select(table).where(table.c.cdr_id == cdr_id)).first()
            if row is None:
                raise ApiError(404, f"no CDR {cdr_id}")
            item = feed_item(row.id, row)
            item["charges"] = [
                {
                    "component": c.component,
                    "service": c.service,
                    "band": c.band,
                    "destination": c.destination,
                    "partner_ioi": c.partner_ioi,
                    "quantity": c.quantity,
                    "amount_minor": c.amount_minor,
                    "currency": c.currency,
                }
                for c in conn.execute(select(charges).where(charges.c.cdr_row_id == row.id).order_by(charges.c.id))
            ]
            item["record"] = json.loads(row.payload)
            return item

        return web.json_response(await self._read(work))

    # -- invoices -------------------------------------------------------------------------------------

    async def list_invoices(self, request: web.Request) -> web.Response:
        limit = query_int(request, "limit", 50, 1, 500)
        cursor = _int_param(request, "cursor")
        account_id = _int_param(request, "account")
        status = request.query.get("status")
        if status not in (None, "", models.INVOICE_OPEN, models.INVOICE_CLOSED):
            raise ApiError(400, "query parameter status must be open or closed")
        table = models.invoices
        query = select(table).order_by(table.c.id.desc()).limit(limit)
        if cursor is not None:
            query = query.where(table.c.id < cursor)
        if account_id is not None:
            query = query.where(table.c.account_id == account_id)
        if status:
            query = query.where(table.c.status == status)
        lines = models.invoice_lines

        def work(conn: Connection) -> list[dict[str, Any]]:
            rows = conn.execute(query).all()
            running = dict(
                conn.execute(
                    select(lines.c.invoice_id, func.sum(lines.c.amount_minor))
                    .where(lines.c.invoice_id.in_([r.id for r in rows]))
                    .group_by(lines.c.invoice_id)
                ).all()
            )
            return [
                {
                    "id": row.id,
                    "number": row.number,
                    "account_id": row.account_id,
                    "status": row.status,
                    "period_start": row.period_start.isoformat(),
                    "period_end": row.period_end.isoformat(),
                    "currency": row.currency,
                    "subtotal_minor": row.subtotal_minor
                    if row.status == models.INVOICE_CLOSED
                    else int(running.get(row.id) or 0),
                    "tax_minor": row.tax_minor,
                    "total_minor": row.total_minor
                    if row.status == models.INVOICE_CLOSED
                    else int(running.get(row.id) or 0),
                }
                for row in rows
            ]

        return web.json_response(_page(await self._read(work), limit))

    async def _invoice(self, request: web.Request) -> dict[str, Any]:
        invoice_id = _path_id(request)

        def work(conn: Connection) -> dict[str, Any]:
            try:
                return invoice_document(conn, invoice_id)
            except InvoiceError:
                raise ApiError(404, f"no invoice {invoice_id}") from None

        return await self._read(work)

    async def get_invoice(self, request: web.Request) -> web.Response:
        return web.json_response(await self._invoice(request))

    async def export_invoice(self, request: web.Request) -> web.Response:
        form = request.query.get("format", "json")
        if form not in ("json", "csv"):
            raise ApiError(400, "query parameter format must be json or csv")
        document = await self._invoice(request)
        name = document["number"] or f"open-{document['id']}"
        if form == "csv":
            body, content_type = export_csv(document), "text/csv"
        else:
            body, content_type = export_json(document), "application/json"
        return web.Response(
            text=body,
            content_type=content_type,
            headers={"Content-Disposition": f'attachment; filename="{name}.{form}"'},
        )

    # -- tariffs and dead letters ---------------------------------------------------------------------

    async def put_tariff(self, request: web.Request) -> web.Response:
        plan_name = request.match_info["plan"]
        body = await read_model(request, TariffBody)
        if body.effective_from.tzinfo is None:
            raise ApiError(422, "invalid request", [{"field": "effective_from", "message": "must carry a time zone"}])

        def work(conn: Connection) -> int:
            return set_tariff(
                conn,
                plan_name,
                body.plan,
                effective_from=body.effective_from,
                now=utc(self.clock.now()),
                note=body.note,
            )

        version = await self._write(work)
        log.info("tariff %s version %d stored", plan_name, version)
        return web.json_response({"plan": plan_name, "version": version}, status=201)

    async def get_tariff(self, request: web.Request) -> web.Response:
        plan_name = request.match_info["plan"]
        versions = await self._read(lambda conn: tariff_versions(conn, plan_name))
        if not versions:
            raise ApiError(404, f"no tariff plan {plan_name}")
        return web.json_response({"plan": plan_name, "versions": versions})

    async def dead_letters(self, request: web.Request) -> web.Response:
        limit = query_int(request, "limit", 50, 1, 500)
        cursor = _int_param(request, "cursor")
        table = models.dead_letters
        query = select(table).order_by(table.c.id.desc()).limit(limit)
        if cursor is not None:
            query = query.where(table.c.id < cursor)

        def work(conn: Connection) -> list[dict[str, Any]]:
            return [
                {
                    "id": row.id,
                    "topic": row.topic,
                    "partition": row.kafka_partition,
                    "offset": row.kafka_offset,
                    "key": row.message_key.decode("utf-8", "replace") if row.message_key else None,
                    "reason": row.reason,
                    "payload_preview": row.payload[:200].decode("utf-8", "replace"),
                    "published": row.published,
                    "received_at": row.received_at.isoformat(),
                }
                for row in conn.execute(query)
            ]

        return web.json_response(_page(await self._read(work), limit))

    # -- live feed ------------------------------------------------------------------------------------

    async def feed(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: each CDR stored after ``after`` (default: from now on), as it is stored."""
        account_id = _int_param(request, "account")
        after = _int_param(request, "after")
        if after is None:
            last_event = request.headers.get("Last-Event-ID", "")
            after = int(last_event) if last_event.isdigit() else await asyncio.to_thread(last_cdr_row_id, self.engine)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        wake = self.hub.subscribe()
        try:
            idle = 0.0
            while not self.hub.closing:
                items = await asyncio.to_thread(cdrs_after, self.engine, after, account_id)
                for item in items:
                    await response.write(sse_event(item))
                    after = item["id"]
                if items:
                    idle = 0.0
                    continue
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), self.settings.feed_poll_seconds)
                except TimeoutError:
                    idle += self.settings.feed_poll_seconds
                    if idle >= HEARTBEAT_SECONDS:
                        await response.write(HEARTBEAT)
                        idle = 0.0
        except ConnectionResetError:
            pass  # the page went away
        finally:
            self.hub.unsubscribe(wake)
        return response

    # -- the page -------------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    # -- routes ---------------------------------------------------------------------------------------

    def add_routes(self, app: web.Application, spec: OpenApi) -> None:
        routes = [
            ("GET", "/billing/accounts", self.list_accounts, "List accounts", True),
            ("POST", "/billing/accounts", self.create_account, "Create an account (admin)", False),
            ("GET", "/billing/accounts/{id}", self.get_account, "An account and its subscriber identities", False),
            (
                "POST",
                "/billing/accounts/{id}/subscribers",
                self.add_subscriber,
                "Add a subscriber identity (admin)",
                False,
            ),
            (
                "GET",
                "/billing/accounts/{id}/usage",
                self.usage,
                "Usage per day and service (from, to: YYYY-MM-DD)",
                False,
            ),
            ("GET", "/billing/cdrs", self.search_cdrs, "Search stored CDRs (account, icid, node, from, to)", True),
            ("GET", "/billing/cdrs/{cdr_id}", self.get_cdr, "One stored CDR with its charges", False),
            ("GET", "/billing/invoices", self.list_invoices, "List invoices (account, status)", True),
            ("GET", "/billing/invoices/{id}", self.get_invoice, "One invoice with its lines and taxes", False),
            (
                "GET",
                "/billing/invoices/{id}/export",
                self.export_invoice,
                "Export an invoice (format: json or csv)",
                False,
            ),
            ("PUT", "/billing/tariffs/{plan}", self.put_tariff, "Store a new version of a tariff plan (admin)", False),
            ("GET", "/billing/tariffs/{plan}", self.get_tariff, "Every version of a tariff plan", False),
            ("GET", "/billing/dead-letters", self.dead_letters, "Messages refused as CDRs, with the reason", True),
            ("GET", "/billing/feed", self.feed, "Server-Sent Events: CDRs as they are stored (account, after)", False),
        ]
        account_ref = spec.add_model(AccountSpec)
        bodies = {
            "/billing/accounts": account_ref,
            "/billing/accounts/{id}/subscribers": spec.add_model(SubscriberBody),
            "/billing/tariffs/{plan}": spec.add_model(TariffBody),
        }
        for method, path, handler, summary, paginated in routes:
            app.router.add_route(method, path, handler)
            operation: dict[str, Any] = {"summary": summary, "tags": ["billing"], "responses": _responses(method)}
            parameters: list[dict[str, Any]] = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in ("id", "plan", "cdr_id")
                if "{" + name + "}" in path
            ]
            if paginated:
                parameters += [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ]
            if parameters:
                operation["parameters"] = parameters
            if method in ("POST", "PUT"):
                operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": bodies[path]}}}
            spec.add(path, method, operation)
        app.router.add_get("/ui/billing", self.page)
        app.router.add_static("/ui/billing/static", STATIC)


def _responses(method: str) -> dict[str, Any]:
    ok = "201" if method in ("POST", "PUT") else "200"
    return {
        ok: {"description": "success"},
        "400": {"description": "a parameter is invalid; the answer names it"},
        "401": {"description": "no valid bearer token"},
        "403": {"description": "the token may only read"},
        "404": {"description": "no such object"},
        "422": {"description": "the body is invalid; the answer names each field"},
    }
