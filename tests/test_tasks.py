"""Periodic background work: rounds on time, on wake-up, a wake during a round is not lost, failures go on."""

from __future__ import annotations

import asyncio

from charging.tasks import Periodic
from tests.support.diameter import wait_until


async def test_rounds_run_every_interval_and_on_wake() -> None:
    rounds: list[str] = []

    async def work() -> None:
        rounds.append("round")

    task = Periodic("test", 0.05, work)
    task.start()
    await wait_until(lambda: len(rounds) >= 2, 2.0, "two timed rounds")
    await task.stop()
    slow = Periodic("slow", 3600, work)
    slow.start()
    before = len(rounds)
    slow.wake()
    await wait_until(lambda: len(rounds) == before + 1, 2.0, "the woken round")
    await slow.stop()


async def test_a_wake_during_a_round_runs_another_round_after_it() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    rounds = 0

    async def work() -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            started.set()
            await release.wait()

    task = Periodic("test", 3600, work, first_at_once=True)
    task.start()
    await started.wait()
    task.wake()  # arrives while the first round is still running
    release.set()
    await wait_until(lambda: rounds == 2, 2.0, "the round the wake asked for")
    await task.stop()


async def test_a_failing_round_is_logged_and_the_next_one_still_runs() -> None:
    calls = 0

    async def work() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database gone")

    task = Periodic("test", 0.02, work)
    task.start()
    await wait_until(lambda: calls >= 2, 2.0, "the round after the failure")
    assert task.failures == 1 and task.last_error is None
    await task.stop()
    assert not task.running
