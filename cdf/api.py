"""The CDF's HTTP API under /cdf/: the correlated view per ICID, CDR lookup, the outbox backlog."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel
from sqlalchemy import Connection, Engine

from cdf import queries
from cdf.correlation import CorrelatedView
from charging.cdr import Cdr
from charging.clock import Clock
from charging.web import ApiError, OpenApi, query_int

T = TypeVar("T")


class CdrPage(BaseModel):
    cdrs: list[Cdr]
    next_after: int | None  # pass as ?after= for the next page; None when this page was the last


class Backlog(BaseModel):
    unpublished: int
    oldest_unpublished_age_seconds: float | None
    unwritten_to_jsonl_files: int
    cdrs_stored: int
    open_records: int
    publisher: dict[str, Any] | None  # CDRs delivered, lease, last error
    files: dict[str, Any] | None
    writer: dict[str, Any] | None  # ACRs written, in how many batches and transactions


class CdfApi:
    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        home_iois: list[str],
        sink_states: Callable[[], dict[str, dict[str, Any] | None]],  # also the writer's counters
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.home_iois = home_iois
        self.sink_states = sink_states

    async def _read(self, fn: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.engine.connect() as conn:
                return fn(conn)

        return await asyncio.to_thread(run)

    async def correlation(self, request: web.Request) -> web.Response:
        icid = request.match_info["icid"]
        view = await self._read(lambda conn: queries.correlated_view(conn, icid, self.home_iois))
        if view is None:
            raise ApiError(404, "unknown ICID", f"no CDR and no open record carries ICID {icid!r}")
        return web.json_response(text=view.model_dump_json())

    async def cdr(self, request: web.Request) -> web.Response:
        cdr_id = request.match_info["cdr_id"]
        found = await self._read(lambda conn: queries.find_cdr(conn, cdr_id))
        if found is None:
            raise ApiError(404, "unknown CDR", f"no CDR with id {cdr_id!r}")
        return web.json_response(text=found.model_dump_json())

    async def cdrs(self, request: web.Request) -> web.Response:
        icid = request.query.get("icid")
        session_id = request.query.get("session_id")
        after = query_int(request, "after", 0, 0, 2**62)
        limit = query_int(request, "limit", 100, 1, 1000)
        rows = await self._read(
            lambda conn: queries.list_cdrs(conn, icid=icid, session_id=session_id, after_id=after, limit=limit)
        )
        page = CdrPage(cdrs=[cdr for _, cdr in rows], next_after=rows[-1][0] if len(rows) == limit else None)
        return web.json_response(text=page.model_dump_json())

    async def outbox(self, request: web.Request) -> web.Response:
        now = self.clock.now()
        counts = await self._read(lambda conn: queries.backlog(conn, now))
        sinks = self.sink_states()
        backlog = Backlog(
            **counts, publisher=sinks.get("publisher"), files=sinks.get("files"), writer=sinks.get("writer")
        )
        return web.json_response(text=backlog.model_dump_json())

    def add_routes(self, app: web.Application, spec: OpenApi) -> None:
        app.router.add_get("/cdf/correlation/{icid}", self.correlation)
        app.router.add_get("/cdf/cdrs/{cdr_id}", self.cdr)
        app.router.add_get("/cdf/cdrs", self.cdrs)
        app.router.add_get("/cdf/outbox", self.outbox)
        view_ref = spec.add_model(CorrelatedView)
        cdr_ref = spec.add_model(Cdr)
        page_ref = spec.add_model(CdrPage)
        backlog_ref = spec.add_model(Backlog)

        def ok(ref: dict[str, str], description: str) -> dict[str, Any]:
            return {"description": description, "content": {"application/json": {"schema": ref}}}

        not_found = {"description": "unknown"}
        spec.add(
            "/cdf/correlation/{icid}",
            "get",
            {
                "summary": "The correlated view of one IMS session: nodes, roles, IOIs, gaps, duration",
                "parameters": [{"name": "icid", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": ok(view_ref, "the view"), "404": not_found},
            },
        )
        spec.add(
            "/cdf/cdrs/{cdr_id}",
            "get",
            {
                "summary": "One CDR by its stable id",
                "parameters": [{"name": "cdr_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": ok(cdr_ref, "the CDR"), "404": not_found},
            },
        )
        spec.add(
            "/cdf/cdrs",
            "get",
            {
                "summary": "CDRs in the order the CDF stored them, optionally of one ICID or Session-Id",
                "parameters": [
                    {"name": "icid", "in": "query", "schema": {"type": "string"}},
                    {"name": "session_id", "in": "query", "schema": {"type": "string"}},
                    {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                ],
                "responses": {"200": ok(page_ref, "a page of CDRs")},
            },
        )
        spec.add(
            "/cdf/outbox",
            "get",
            {
                "summary": "CDRs waiting for Kafka and for files, open records, and the state of both sinks",
                "responses": {"200": ok(backlog_ref, "the backlog")},
            },
        )
