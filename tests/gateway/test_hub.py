"""EventQueue: finals in order, only the newest partial and progress report."""

from __future__ import annotations

import asyncio

from gateway.hub import EventQueue
from shared.wire import Done, FinalResult, PartialResult, Progress


def final(segment: int) -> FinalResult:
    return FinalResult(
        segment=segment, text=f"f{segment}", likelihood=1.0, start=0.0, length=1.0, total=1.0
    )


async def test_a_client_that_never_reads_leaves_a_small_queue() -> None:
    queue = EventQueue()
    for segment in range(3):
        for n in range(1000):
            queue.put_nowait(PartialResult(segment, f"p{segment}.{n}"))
            queue.put_nowait(Progress(segment * 1000 + n))
        queue.put_nowait(final(segment))
    queue.put_nowait(PartialResult(3, "last words"))
    queue.put_nowait(Done(segments=3, total=9.0))
    got = [await queue.get() for _ in range(len(queue))]
    assert got == [
        final(0),
        final(1),
        Progress(2999),
        final(2),
        PartialResult(3, "last words"),
        Done(segments=3, total=9.0),
    ]


async def test_get_waits_for_the_next_event() -> None:
    queue = EventQueue()
    waiter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    queue.put_nowait(final(0))
    assert await asyncio.wait_for(waiter, 1) == final(0)
