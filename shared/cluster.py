"""The cluster as Redis holds it: workers' heartbeats, models, live sessions, queues.

A decoder worker writes its :class:`Heartbeat` (:func:`beat`) every second and removes
it when it stops (:func:`leave`); the gateway (admission, readiness,
``/client/ws/status``), the batch worker and ``ksc status`` read them
(:func:`workers`). Both sides of that record are here, so its fields have one
definition. Heartbeats are stamped and aged in Redis server time, so hosts whose
clocks disagree still agree on which workers are live; a worker counts as live for
:data:`~shared.keys.WORKER_LIVE_S` after its last beat.

:func:`queued` counts the sessions waiting in a model's stream exactly and repairs the
consumer group's ``lag`` if Redis has it wrong (it is an estimate, and after an AOF
reload it can be far off): admission and the KEDA trigger both rely on it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared.keys import GROUP, WORKER_LIVE_S, WORKER_TTL_S, Keys

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
    #: stopping: it takes no new session, so its slots are not capacity
    draining: bool = False


@dataclass(frozen=True)
class SessionInfo:
    id: str
    model: str
    state: str
    owner: str
    audio_seconds: float
    age: float
    takeovers: int


#: The rate every model a worker serves decodes at: kaldi-active-grammar takes 16 kHz
#: only, and ``ksc model prepare`` refuses a model of another rate. Admission assumes it
#: for a model no worker has registered yet (decoders scaled to zero, Redis emptied).
MODEL_SAMPLE_RATE = 16000


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
    #: when it was written, Redis server time (seconds); :func:`beat` stamps it
    at: float = 0.0
    #: stopping: its running sessions finish, it claims no new one
    draining: bool = False

    def fields(self) -> dict[str, str | int]:
        return {
            "host": self.host,
            "pid": self.pid,
            "slots_total": self.slots_total,
            "slots_free": self.slots_free,
            "models": ",".join(self.models),
            "version": self.version,
            "heartbeat": repr(self.at),
            "draining": int(self.draining),
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
            draining=_s(raw, "draining", "0") == "1",
        )


async def server_time(redis: Redis) -> float:
    """Redis's clock, in seconds: the one clock every host of the cluster shares."""
    seconds, micros = await redis.time()
    return float(seconds) + float(micros) / 1e6


async def beat(
    redis: Redis, keys: Keys, worker_id: str, heartbeat: Heartbeat, sample_rate: int
) -> None:
    """Write a worker's heartbeat stamped with Redis's time (its ``at`` is ignored),
    with its TTL; index it and register its models."""
    stamped = replace(heartbeat, at=await server_time(redis))
    pipe = redis.pipeline(transaction=False)
    pipe.hset(keys.worker(worker_id), mapping=stamped.fields())
    pipe.expire(keys.worker(worker_id), WORKER_TTL_S)
    pipe.zadd(keys.workers, {worker_id: stamped.at})
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
    """Live workers: those whose last heartbeat is younger than ``WORKER_LIVE_S`` in
    Redis time. Expired index entries are pruned on the way."""
    now = await server_time(redis)
    await redis.zremrangebyscore(keys.workers, "-inf", now - WORKER_TTL_S)
    ids = [i.decode() for i in await redis.zrangebyscore(keys.workers, now - WORKER_LIVE_S, "+inf")]
    pipe = redis.pipeline(transaction=False)
    for wid in ids:
        pipe.hgetall(keys.worker(wid))
    result = []
    for wid, raw in zip(ids, await pipe.execute() if ids else [], strict=True):
        if not raw:
            continue
        beat_ = Heartbeat.parse(raw)
        if now - beat_.at > WORKER_LIVE_S:
            continue
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
                draining=beat_.draining,
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


async def ensure_queue(redis: Redis, keys: Keys, model_id: str) -> None:
    """Create a model's sessions stream and its consumer group if missing: Redis may have
    lost them, and KEDA's trigger and the gateway's queue count need the group even
    while no worker has started."""
    try:
        await redis.xgroup_create(keys.sessions(model_id), GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


#: Waiting sessions are counted among this many stream entries at most.
MAX_QUEUE_SCAN = 10_000

# Count the entries after the group's last-delivered id (those no worker has read), and
# when the group's lag disagrees, set its entries-read counter so that it agrees: KEDA's
# lagCount trigger reads the lag. Atomic, so no read by a worker can slip in between.
_QUEUED = """
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return 0 end
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  if info['name'] == ARGV[1] then
    local last = info['last-delivered-id']
    local entries = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', ARGV[2])
    local waiting = #entries
    if info['lag'] ~= waiting and waiting < tonumber(ARGV[2]) then
      local stream = redis.call('XINFO', 'STREAM', KEYS[1])
      local added = 0
      for i = 1, #stream, 2 do
        if stream[i] == 'entries-added' then added = stream[i + 1] end
      end
      if added >= waiting then
        redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], last, 'ENTRIESREAD', added - waiting)
      end
    end
    return waiting
  end
end
return 0
"""


async def queued(redis: Redis, keys: Keys, model_id: str) -> int:
    """Sessions enqueued for ``model_id`` that no worker has read yet, counted exactly
    (up to :data:`MAX_QUEUE_SCAN`); repairs the consumer group's ``lag`` on the way.

    Entries of sessions that gave up waiting count until a worker skips them."""
    return int(await redis.eval(_QUEUED, 1, keys.sessions(model_id), GROUP, MAX_QUEUE_SCAN))


async def free_slots(redis: Redis, keys: Keys, model_id: str) -> int:
    """Free decoder slots for a model, minus the sessions already waiting for one."""
    free = sum(w.slots_free for w in await workers(redis, keys) if model_id in w.models)
    return free - await queued(redis, keys, model_id)


#: ``ksc status`` and ``/status`` list at most this many sessions (the oldest first);
#: ``sessions_total`` in their document counts all of them.
MAX_SESSIONS_LISTED = 200


async def sessions(redis: Redis, keys: Keys, limit: int = MAX_SESSIONS_LISTED) -> list[SessionInfo]:
    """Live sessions, the oldest first, at most ``limit``, in two round trips. A record
    that vanished or lost its fields (Redis restarted without its data) leaves the
    index on the way."""
    now = time.time()
    sids = [raw.decode() for raw in await redis.zrange(keys.live, 0, max(0, limit) - 1)]
    pipe = redis.pipeline(transaction=False)
    for sid in sids:
        pipe.hgetall(keys.meta(sid))
    result = []
    for sid, meta in zip(sids, await pipe.execute() if sids else [], strict=True):
        if not meta.get(b"state") or not meta.get(b"created"):
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
                age=round(now - float(_s(meta, "created")), 1),
                takeovers=int(_s(meta, "takeovers", "0")),
            )
        )
    return result


async def requests_processed(redis: Redis, keys: Keys) -> int:
    return int(await redis.hget(keys.stats, "requests_processed") or 0)


async def snapshot(redis: Redis, keys: Keys) -> dict[str, Any]:
    """The ``ksc status --json`` shape: ``{"workers": [...], "sessions": [...],
    "sessions_total": N, "requests_processed": N}``."""
    return {
        "workers": [asdict(w) for w in await workers(redis, keys)],
        "sessions": [asdict(s) for s in await sessions(redis, keys)],
        "sessions_total": int(await redis.zcard(keys.live)),
        "requests_processed": await requests_processed(redis, keys),
    }
