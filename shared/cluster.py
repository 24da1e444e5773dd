"""A read-only view of the cluster as Redis holds it: workers, models, live sessions.

Used by the gateway (admission, readiness, ``/client/ws/status``) and by ``ksc status``.
"""

from __future__ import annotations

import json
import re
import time
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


def _s(raw: dict[bytes, bytes], name: str, default: str = "") -> str:
    return raw.get(name.encode(), default.encode()).decode()


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
        result.append(
            WorkerInfo(
                id=wid,
                host=_s(raw, "host"),
                pid=int(_s(raw, "pid", "0")),
                slots_total=int(_s(raw, "slots_total", "0")),
                slots_free=int(_s(raw, "slots_free", "0")),
                models=tuple(m for m in _s(raw, "models").split(",") if m),
                version=_s(raw, "version"),
                heartbeat_age=round(now - float(_s(raw, "heartbeat", "0")), 3),
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
