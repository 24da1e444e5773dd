"""Stopping asyncio tasks for certain.

On Python 3.11, ``asyncio.wait_for`` loses a cancellation that arrives just as the
awaited call completes (bpo-42130, fixed in 3.12), and redis-py sends commands through
``wait_for``. The cancelled task then carries on to its next blocking call: a decoder
worker kept feeding a session that had already failed until its next XREAD returned, a
minute later. ``stop_tasks`` cancels again until the tasks have really ended.
"""

from __future__ import annotations

import asyncio
from typing import Any

#: How long to wait for a cancelled task before cancelling it again.
_RECANCEL_S = 0.05


async def stop_tasks(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel ``tasks`` and wait until each has ended; their outcomes are discarded."""
    pending = {task for task in tasks if task is not None}
    ended = set(pending)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=_RECANCEL_S)
    for task in ended:
        if not task.cancelled():
            task.exception()  # mark it retrieved: the caller chose to discard it
