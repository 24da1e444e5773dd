"""Where audio goes onto Redis: one pipeline at a time for every session's entries.

A session used to send its own pipeline for every frame it appended. At 500 live
streams that is 2000 pipelines a second, each taking a pooled connection; when the
streams start together the pool grows to hundreds of connections, each set up with a
handshake, and the gateway stalls for a second (``docs/performance.md``). Sessions
now hand their commands to the process's :class:`Appender`. Whatever is queued when
the previous pipeline has been answered goes out as the next one, so under load one
connection carries many sessions' entries per round trip, and with a single stream
an entry waits for nothing but its own round trip.

A session's own commands keep their order: it awaits each :meth:`Appender.run`
before queueing more. A failed command fails only the session that queued it; a lost
connection fails every session in that pipeline, as its own pipeline would have.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from shared.tasks import stop_tasks

__all__ = ["Appender", "Command"]

#: a pipeline method's name and its positional arguments, e.g. ``("xadd", (key, fields))``
Command = tuple[str, Sequence[Any]]


class Appender:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._queue: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def run(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` in the next pipeline; their replies, in order.

        Raises the first command's error, or the connection's.
        """
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((commands, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())
        return await future

    async def _send(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._pipeline(batch)
        finally:
            self._sender = None

    async def _pipeline(self, batch: list[tuple[Sequence[Command], asyncio.Future[Any]]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for commands, _ in batch:
            for name, args in commands:
                getattr(pipe, name)(*args)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection's error: every session in it hears it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except asyncio.CancelledError:  # closing: nobody waits for an answer forever
            for _, future in batch:
                future.cancel()
            raise
        start = 0
        for commands, future in batch:
            mine = replies[start : start + len(commands)]
            start += len(commands)
            if future.done():  # its session was cancelled meanwhile
                continue
            error = next((r for r in mine if isinstance(r, Exception)), None)
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(mine)

    async def close(self) -> None:
        """Stop sending; sessions still waiting are cancelled with it."""
        if self._sender is not None:
            await stop_tasks(self._sender)
        for _, future in self._queue:
            future.cancel()
        self._queue = []
