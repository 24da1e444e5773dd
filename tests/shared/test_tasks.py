"""stop_tasks ends tasks even when a cancellation is lost inside ``asyncio.wait_for``."""

from __future__ import annotations

import asyncio

from shared.tasks import stop_tasks


async def test_a_task_whose_cancellation_was_lost_is_stopped() -> None:
    inner: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def body() -> None:
        await asyncio.wait_for(inner, 10)  # as redis-py sends a command
        await asyncio.sleep(3600)  # as the next blocking XREAD

    task = asyncio.create_task(body())
    await asyncio.sleep(0)
    inner.set_result(None)  # the reply arrives in the same turn as the cancellation
    await asyncio.wait_for(stop_tasks(task), 5)
    assert task.cancelled()


async def test_outcomes_are_discarded_and_none_is_skipped() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    async def finishes() -> int:
        return 1

    failed = asyncio.create_task(fails())
    finished = asyncio.create_task(finishes())
    await asyncio.sleep(0)
    await stop_tasks(failed, None, finished)
    assert failed.done() and finished.result() == 1
