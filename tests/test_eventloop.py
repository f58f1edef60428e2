"""The loop charging's processes and these tests run on."""

from __future__ import annotations

import asyncio

from charging import eventloop


async def _loop_module() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_run_gives_the_coroutines_result_on_uvloop() -> None:
    assert eventloop.run(_loop_module()).startswith("uvloop")


async def test_asynchronous_tests_run_on_the_same_loop() -> None:
    assert (await _loop_module()).startswith("uvloop")
