"""What ``charging serve`` hands each role, and what it expects back.

Every package (cdf, ocf, billing) provides ``<package>.service.create_service(ctx)``
returning an object with this shape.  ``serve`` builds one ServiceContext, creates
the services of the configured roles, registers their Diameter handlers on the one
node, mounts their HTTP routes on the one aiohttp application, starts them, and on
SIGTERM stops them in reverse order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web
from sqlalchemy import Engine

from charging.clock import Clock, SystemClock
from charging.config import Settings
from charging.diameter.node import DiameterNode
from charging.metrics import Registry
from charging.web import OpenApi


@dataclass(slots=True)
class ServiceContext:
    settings: Settings
    engine: Engine
    node: DiameterNode | None  # None for roles without Diameter (billing)
    kafka_bootstrap: str | None  # None when no broker is configured or started
    clock: Clock = field(default_factory=SystemClock)
    metrics: Registry = field(default_factory=Registry)
    node_id: str = "charging-1"


class Service(Protocol):
    name: str

    async def start(self) -> None:
        """Begin work: background tasks (sweepers, publishers, consumers) start here."""

    async def stop(self) -> None:
        """Finish in-flight work, flush what can be flushed (outbox, files), release resources."""

    def add_routes(self, app: web.Application, spec: OpenApi) -> None:
        """Mount this service's HTTP API (under /<name>/...) and describe it in the OpenAPI document."""

    def ready(self) -> bool:
        """Whether the service can do its work now (database and broker reachable, consumer joined)."""
