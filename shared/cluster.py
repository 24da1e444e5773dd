"""The cluster as Redis holds it: workers' heartbeats, models, live sessions.

A decoder worker writes its :class:`Heartbeat` (:func:`beat`) every second and removes
it when it stops (:func:`leave`); the gateway (admission, readiness,
``/client/ws/status``), the batch worker and ``ksc status`` read them
(:func:`workers`). Both sides of that record are here, so its fields have one
definition.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared.keys import GROUP, WORKER_TTL_S, Keys

#: What a model id may look like: a name, never a path.
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    slots_total: int
    slots_free: int
    models: tuple[str, ...]
    version: str
    heartbeat_age: float


@dataclass(frozen=True)
class SessionInfo:
    id: str
    model: str
    state: str
    owner: str
    audio_seconds: float
    age: float
    takeovers: int


@dataclass(frozen=True)
class ModelInfo:
    id: str
    sample_rate: int


def _s(raw: Mapping[bytes, bytes], name: str, default: str = "") -> str:
    return raw.get(name.encode(), default.encode()).decode()


@dataclass(frozen=True)
class Heartbeat:
    """A worker's record ``P:worker:<id>`` (a hash with a TTL), as of its last beat."""

    host: str
    pid: int
    slots_total: int
    slots_free: int
    models: tuple[str, ...]
    version: str
    #: when it was written (``time.time()``)
    at: float

    def fields(self) -> dict[str, str | int]:
        return {
            "host": self.host,
            "pid": self.pid,
            "slots_total": self.slots_total,
            "slots_free": self.slots_free,
            "models": ",".join(self.models),
            "version": self.version,
            "heartbeat": repr(self.at),
        }

    @classmethod
    def parse(cls, raw: Mapping[bytes, bytes]) -> Heartbeat:
        return cls(
            host=_s(raw, "host"),
            pid=int(_s(raw, "pid", "0")),
            slots_total=int(_s(raw, "slots_total", "0")),
            slots_free=int(_s(raw, "slots_free", "0")),
            models=tuple(m for m in _s(raw, "models").split(",") if m),
            version=_s(raw, "version"),
            at=float(_s(raw, "heartbeat", "0")),
        )


async def beat(
    redis: Redis, keys: Keys, worker_id: str, heartbeat: Heartbeat, sample_rate: int
) -> None:
    """Write a worker's heartbeat (with its TTL), index it, and register its models."""
    pipe = redis.pipeline(transaction=False)
    pipe.hset(keys.worker(worker_id), mapping=heartbeat.fields())
    pipe.expire(keys.worker(worker_id), WORKER_TTL_S)
    pipe.zadd(keys.workers, {worker_id: heartbeat.at})
    for model_id in heartbeat.models:
        pipe.hset(keys.models, model_id, json.dumps({"sample_rate": sample_rate}))
    await pipe.execute()


async def leave(redis: Redis, keys: Keys, worker_id: str) -> None:
    """Remove a stopping worker's heartbeat, so nobody counts its slots any more."""
    pipe = redis.pipeline(transaction=False)
    pipe.delete(keys.worker(worker_id))
    pipe.zrem(keys.workers, worker_id)
    await pipe.execute()


async def workers(redis: Redis, keys: Keys) -> list[WorkerInfo]:
    """Workers whose heartbeat is fresh; stale index entries are pruned on the way."""
    now = time.time()
    await redis.zremrangebyscore(keys.workers, "-inf", now - WORKER_TTL_S)
    ids = [i.decode() for i in await redis.zrange(keys.workers, 0, -1)]
    result = []
    for wid in ids:
        raw = await redis.hgetall(keys.worker(wid))
        if not raw:
            continue
        beat_ = Heartbeat.parse(raw)
        result.append(
            WorkerInfo(
                id=wid,
                host=beat_.host,
                pid=beat_.pid,
                slots_total=beat_.slots_total,
                slots_free=beat_.slots_free,
                models=beat_.models,
                version=beat_.version,
                heartbeat_age=round(now - beat_.at, 3),
            )
        )
    return result


async def model(redis: Redis, keys: Keys, model_id: str) -> ModelInfo | None:
    raw = await redis.hget(keys.models, model_id)
    if raw is None:
        return None
    info = json.loads(raw)
    return ModelInfo(id=model_id, sample_rate=int(info["sample_rate"]))


async def served_models(redis: Redis, keys: Keys) -> set[str]:
    """Model ids that at least one live worker serves."""
    return {m for w in await workers(redis, keys) for m in w.models}


async def queued(redis: Redis, keys: Keys, model_id: str) -> int:
    """Sessions enqueued for ``model_id`` that no worker has read yet (the group's lag)."""
    try:
        groups = await redis.xinfo_groups(keys.sessions(model_id))
    except ResponseError:  # no such stream yet
        return 0
    for group in groups:
        if group["name"] in (GROUP, GROUP.encode()):
            return int(group.get("lag") or 0)
    return 0


async def free_slots(redis: Redis, keys: Keys, model_id: str) -> int:
    """Free decoder slots for a model, minus the sessions already waiting for one."""
    free = sum(w.slots_free for w in await workers(redis, keys) if model_id in w.models)
    return free - await queued(redis, keys, model_id)


async def sessions(redis: Redis, keys: Keys) -> list[SessionInfo]:
    now = time.time()
    result = []
    for raw_sid in await redis.zrange(keys.live, 0, -1):
        sid = raw_sid.decode()
        meta = await redis.hgetall(keys.meta(sid))
        if not meta:
            await redis.zrem(keys.live, sid)
            continue
        result.append(
            SessionInfo(
                id=sid,
                model=_s(meta, "model"),
                state=_s(meta, "state"),
                owner=_s(meta, "owner"),
                audio_seconds=round(
                    int(_s(meta, "audio_bytes", "0")) / 2 / int(_s(meta, "sample_rate", "16000")), 2
                ),
                age=round(now - float(_s(meta, "created", "0") or 0), 1),
                takeovers=int(_s(meta, "takeovers", "0")),
            )
        )
    return result


async def requests_processed(redis: Redis, keys: Keys) -> int:
    return int(await redis.hget(keys.stats, "requests_processed") or 0)


async def snapshot(redis: Redis, keys: Keys) -> dict[str, Any]:
    """The ``ksc status --json`` shape: ``{"workers": [...], "sessions": [...]}``."""
    return {
        "workers": [asdict(w) for w in await workers(redis, keys)],
        "sessions": [asdict(s) for s in await sessions(redis, keys)],
        "requests_processed": await requests_processed(redis, keys),
    }
