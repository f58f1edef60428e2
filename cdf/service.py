"""The CDF as a service of ``charging serve``: Rf handler, writer, sweeper, Kafka publisher, CDR files, API."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web
from sqlalchemy import Connection

from cdf import queries
from cdf.api import CdfApi
from cdf.assembly import Assembler, AssemblyConfig
from cdf.bx.writer import BxFileWriter
from cdf.files import CdrFileWriter
from cdf.publisher import OutboxPublisher
from cdf.server import RfServer
from cdf.settings import CdfSettings
from cdf.sink import OutboxSink, SinkTiming
from cdf.store import AcrWriter, CdfStore
from cdf.sweeper import Sweeper
from charging.cdr import Cdr
from charging.db import GroupCommitter
from charging.diameter.constants import AppId, Command
from charging.metrics import Sampled
from charging.service import ServiceContext
from charging.tasks import Periodic
from charging.web import OpenApi

log = logging.getLogger("charging.cdf")

T = TypeVar("T")

SINK_WRITE_TIMEOUT = 60.0


def assembly_config(settings: CdfSettings) -> AssemblyConfig:
    return AssemblyConfig(
        interim_interval=settings.acct_interim_interval_seconds,
        incomplete_multiple=settings.incomplete_interval_multiple,
        incomplete_timeout=settings.incomplete_timeout_seconds,
        interim_closes_partial=settings.interim_closes_partial,
        partial_max_duration=settings.partial_max_duration_seconds,
        partial_max_changes=settings.partial_max_changes,
    )


def sink_marks(ctx: ServiceContext) -> dict[str, str]:
    """The enabled sinks and the outbox column each sets: all must be set before a CDR past retention goes."""
    settings = ctx.settings.cdf
    marks = {}
    if settings.publish:
        marks["kafka"] = "published_at"
    if settings.files_enabled:
        marks["jsonl"] = "jsonl_written_at"
    if ctx.settings.bx.enabled:  # the TS 32.297 writer (cdf.bx)
        marks["bx"] = "file_written_at"
    return marks


class CdfService:
    name = "cdf"

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        settings = ctx.settings.cdf
        self.settings = settings
        self.clock = ctx.clock
        self.committer = GroupCommitter(ctx.engine, name="cdf-writer")
        self.assembler = Assembler(assembly_config(settings))
        self.store = CdfStore(self.assembler, ctx.node_id, cache_size=settings.remembered_records)
        self.writer = AcrWriter(self.committer, self.store, max_batch=settings.max_batch, on_cdrs=self._closed)
        self.server: RfServer | None = None
        if ctx.node is not None:
            self.server = RfServer(
                ctx.node, self.writer, ctx.clock, ctx.metrics, interim_interval=settings.acct_interim_interval_seconds
            )
            ctx.node.register(AppId.ACCOUNTING, Command.ACCOUNTING, self.server.handle)
        self.sweeper = Sweeper(
            self.committer,
            self.store,
            ctx.clock,
            interval=settings.sweep_interval_seconds,
            batch=settings.sweep_batch,
            retention_seconds=settings.retention_days * 86_400,
            marks=list(sink_marks(ctx).values()),
            on_cdrs=self._closed,
        )
        # A lease belongs to this process, not to the node id: two processes configured with one node id
        # must still not both publish.  A restarted instance takes over when its old lease expires.
        lease_owner = f"{ctx.node_id}/{uuid.uuid4().hex[:8]}"
        timing = SinkTiming(
            batch=settings.publish_batch,
            poll_seconds=settings.publish_poll_seconds,
            backoff_max_seconds=settings.publish_backoff_max_seconds,
            lease_seconds=settings.lease_seconds,
        )
        self.publisher: OutboxPublisher | None = None
        if settings.publish and ctx.kafka_bootstrap:
            kafka = ctx.settings.kafka
            self.publisher = OutboxPublisher(
                self._run_write,
                bootstrap=ctx.kafka_bootstrap,
                topic=kafka.cdr_topic,
                partitions=kafka.partitions,
                owner=lease_owner,
                clock=ctx.clock,
                timing=timing,
                delivery_timeout=settings.publish_timeout_seconds,
            )
        elif settings.publish:
            log.warning("no Kafka broker configured: CDRs stay in the outbox")
        self.files: CdrFileWriter | None = None
        if settings.files_enabled:
            self.files = CdrFileWriter(
                self._run_write,
                directory=settings.files_directory,
                owner=lease_owner,
                clock=ctx.clock,
                timing=SinkTiming(
                    batch=settings.publish_batch,
                    poll_seconds=settings.file_poll_seconds,
                    backoff_max_seconds=settings.publish_backoff_max_seconds,
                    lease_seconds=settings.lease_seconds,
                ),
                max_bytes=settings.file_max_bytes,
                max_records=settings.file_max_records,
                max_age_seconds=settings.file_max_age_seconds,
            )
        # TS 32.297 CDR files for a billing domain (Bx), from the same outbox, marking their own column.
        self.bx: BxFileWriter | None = None
        if ctx.settings.bx.enabled:
            self.bx = BxFileWriter(
                ctx.engine, ctx.settings.bx, owner=lease_owner, clock=ctx.clock, run_write=self._run_write
            )
        self.api = CdfApi(ctx.engine, ctx.clock, settings.home_iois, self.sink_states)
        self._cdrs = ctx.metrics.counter("cdf_cdrs_total", "CDRs closed, by cause for record closing", ["cause"])
        ctx.metrics.counter("cdf_outbox_published_total", "CDRs the publisher sent and marked", read=self._published)
        self.state = Sampled(ctx.metrics, "cdf_state")
        self.state.gauge("cdf_open_records", "records of sessions still open (no STOP yet)")
        self.state.gauge("cdf_outbox_backlog", "closed CDRs a sink has not delivered yet", ["sink"])
        self.state.gauge("cdf_outbox_oldest_waiting_seconds", "age of the oldest CDR a sink holds back", ["sink"])
        self._sampling = Periodic(
            "cdf-state", ctx.settings.http.metrics_sample_seconds, self.sample_state, first_at_once=True
        )
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- wiring ----------------------------------------------------------------------------------------------
    def _sinks(self) -> list[OutboxSink]:
        return [sink for sink in (self.publisher, self.files) if sink is not None]

    def _closed(self, cdrs: list[Cdr]) -> None:
        for cdr in cdrs:
            self._cdrs.inc(cdr.cause_for_record_closing.value)
        for sink in self._sinks():
            sink.notify()

    def _published(self) -> float:
        return float(self.publisher.delivered) if self.publisher is not None else 0.0

    def _run_write(self, fn: Callable[[Connection], T]) -> T:
        """Run a sink's write in the writer thread (from the sink's own thread), so SQLite sees one writer."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the CDF service is not running")
        return asyncio.run_coroutine_threadsafe(self.committer.run(fn), loop).result(SINK_WRITE_TIMEOUT)

    def sink_states(self) -> dict[str, dict[str, Any] | None]:
        def state(sink: OutboxSink | None) -> dict[str, Any] | None:
            if sink is None:
                return None
            return {"delivered": sink.delivered, "holds_lease": sink.holds_lease, "last_error": sink.last_error}

        return {
            "publisher": state(self.publisher),
            "files": state(self.files),
            "writer": {
                "acrs": self.writer.acrs,
                "batches": self.writer.batches,
                "transactions": self.committer.batches,
            },
        }

    async def sample_state(self) -> None:
        """Count what /metrics shows of the database's state (through the writer, like every CDF statement)."""
        marks = sink_marks(self.ctx)
        now = self.clock.now()

        def read(conn: Connection) -> dict[str, float | list[tuple[tuple[str, ...], float]]]:
            backlog: list[tuple[tuple[str, ...], float]] = []
            oldest: list[tuple[tuple[str, ...], float]] = []
            for sink, column in marks.items():
                count, age = queries.waiting(conn, column, now)
                backlog.append(((sink,), count))
                oldest.append(((sink,), age or 0.0))
            return {
                "cdf_open_records": queries.open_record_count(conn),
                "cdf_outbox_backlog": backlog,
                "cdf_outbox_oldest_waiting_seconds": oldest,
            }

        self.state.update(now, await self.committer.run(read))

    # -- the Service contract ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.committer.start()
        self.sweeper.start()
        self._sampling.start()
        for sink in self._sinks():
            sink.start()
        if self.bx is not None:
            self.bx.start()

    async def stop(self) -> None:
        await self._sampling.stop()
        await self.sweeper.stop()
        await self.writer.drain()
        # The sinks' last rounds write through the committer, which needs this loop: stop them off it.
        for sink in self._sinks():
            await asyncio.to_thread(sink.stop)
        if self.bx is not None:
            await asyncio.to_thread(self.bx.stop)  # closes the open file (shutdown is a closure trigger)
        self.committer.stop()

    def add_routes(self, app: web.Application, spec: OpenApi) -> None:
        self.api.add_routes(app, spec)

    def ready(self) -> bool:
        """The database answered the last ACR batch and the last sweep; a broker outage only grows the outbox."""
        return self.writer.database_ok and self.sweeper.database_ok

    async def sweep_now(self) -> list[Cdr]:
        """Close what is due at the clock's now (tests and the CLI drive the clock)."""
        return await self.sweeper.sweep()


def create_service(ctx: ServiceContext) -> CdfService:
    return CdfService(ctx)
