"""Background work that repeats: sweepers, ASR/RAR rounds, anything that runs every so often.

``Periodic`` runs an async function every ``interval`` seconds in its own task, or at once when
woken (``wake()``, e.g. after a block or a top-up); a wake that arrives while a round runs starts
the next round right after it, so none is lost.  A failing round is logged and the next one runs
on time; a round is never cancelled halfway except by ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("charging.tasks")


class Periodic:
    def __init__(
        self, name: str, interval: float, work: Callable[[], Awaitable[object]], *, first_at_once: bool = False
    ):
        self.name = name
        self.interval = interval
        self._work = work
        self._first_at_once = first_at_once
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.rounds = 0
        self.failures = 0
        self.last_error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            if self._first_at_once:
                self._wake.set()
            self._task = asyncio.create_task(self._run(), name=self.name)

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()  # cleared before the round: a wake during it is kept for the next
            try:
                await self._work()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                self.last_error = exc
                log.exception("%s round failed", self.name)
            self.rounds += 1
