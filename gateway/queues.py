"""The sessions queues, kept countable while nobody else looks at them.

Every few seconds a gateway makes sure each model it admits sessions for has its
sessions stream and consumer group (Redis may have lost them; until a worker starts,
nothing else would create them, and KEDA's trigger then fails with NOGROUP and cannot
scale from zero), and recounts the sessions waiting there, which sets the group's
``lag`` right when Redis's estimate went wrong (:func:`shared.cluster.queued`). KEDA's
``lagCount`` trigger reads that lag. Every replica does it; the work is one script per
model, and doing it twice is harmless.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import cluster
from shared.keys import Keys
from shared.tasks import stop_tasks

log = logging.getLogger(__name__)
#: How often the queues are checked.
KEEP_INTERVAL_S = 5.0


def admitted_models(default: str, allowed: str) -> tuple[str, ...]:
    """The models a gateway admits sessions for by its settings (``--model`` and
    ``--models``); with no ``--models`` it admits what live workers serve too, and
    those workers keep their own queues."""
    names = [default] + [m.strip() for m in allowed.split(",") if m.strip()]
    return tuple(dict.fromkeys(names))


class QueueKeeper:
    def __init__(self, redis: Redis, keys: Keys, models: tuple[str, ...]) -> None:
        self._redis = redis
        self._keys = keys
        self.models = models
        self._task: asyncio.Task[None] | None = None

    async def keep_once(self) -> dict[str, int]:
        """Create what is missing and recount; the waiting sessions per model."""
        waiting = {}
        for model_id in self.models:
            await cluster.ensure_queue(self._redis, self._keys, model_id)
            waiting[model_id] = await cluster.queued(self._redis, self._keys, model_id)
        return waiting

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="queue-keeper")

    async def close(self) -> None:
        await stop_tasks(self._task)
        self._task = None

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self.keep_once()
                failures = 0
            except (RedisError, OSError) as exc:
                failures += 1
                if failures == 1:
                    log.warning("keeping the sessions queues failed: %s", exc)
            await asyncio.sleep(KEEP_INTERVAL_S)
