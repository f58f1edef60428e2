"""The event loop every charging process runs on: uvloop where it exists.

The OCF and the CDF spend a good part of each request in the event loop itself (reading
sockets, scheduling callbacks and tasks, writing answers).  uvloop does that work in C on libuv:
the OCF benchmark answered about 12 % more CCRs per second with about 10 % less CPU per CCR
on it (docs/ocf.md).  uvloop does not exist on Windows; there asyncio's own loop runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

try:
    import uvloop
except ImportError:  # pragma: no cover - Windows
    uvloop = None  # type: ignore[assignment]

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes a new loop: uvloop's, or None for asyncio's default."""
    return uvloop.new_event_loop if uvloop is not None else None


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the project's loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
