"""A bound on the batch work one API key may have pending, counted in Redis.

An upload waits in Redis until its job ends, and for up to ``BATCH_AUDIO_TTL_S`` (7
days) when no batch worker takes it: without a bound, one key could park
``batch_max_bytes`` (64 MiB) times as many requests as it cares to send. So each key
— with authentication off, every client together, as
:data:`~gateway.auth.ANONYMOUS` — may have at most ``batch_key_max_jobs`` jobs and
``batch_key_max_bytes`` bytes of uploads pending (queued or running); past either the
submission gets 429 with status 6, like the other per-key limits.

**Counted** in a sorted set per key (:meth:`~shared.keys.Keys.key_batch`), one member
``JOB_ID:BYTES`` per pending job scored by its upload's expiry, so the bound holds
across gateway replicas. A place is taken by one script (drop expired members, count,
add) *after* the upload is stored, so every member has its upload while the job is
pending.

**Given back** when the job ends, lazily: each submission of the key first drops the
members whose job has ended — its upload is gone (the batch worker deletes it when the
job ends, finished or failed; Redis when it expires) or rq records the job as ended —
and an expired member drops out by its score. A check before the body is read refuses
a key at its job limit, or whose declared ``Content-Length`` cannot fit, without
reading the upload.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from rq.job import Job, JobStatus

from shared.keys import BATCH_AUDIO_TTL_S, Keys
from shared.protocol import LimitExceeded

#: ``Retry-After`` of a refused submission: batch jobs take minutes.
RETRY_AFTER_S = 60
#: rq's states of a job that has ended.
_ENDED = frozenset(
    s.value.encode()
    for s in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
)

# KEYS[1] the key's zset; ARGV: member, bytes, max jobs, max bytes, TTL s.
# Returns {1 admitted | 0 refused, jobs, bytes} (jobs and bytes before this one if refused).
_RESERVE = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local jobs, bytes = 0, 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  jobs = jobs + 1
  bytes = bytes + (tonumber(string.match(member, ':(%d+)$')) or 0)
end
local size, max_jobs, max_bytes = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if (max_jobs > 0 and jobs >= max_jobs) or (max_bytes > 0 and bytes + size > max_bytes) then
  return {0, jobs, bytes}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[5]), ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return {1, jobs + 1, bytes + size}
"""


@dataclass(frozen=True)
class Usage:
    jobs: int
    bytes: int


def _member(job_id: str, size: int) -> str:
    return f"{job_id}:{size}"


class BatchQuota:
    """The pending batch work of one key (``name``) and its bounds (0 = unbounded)."""

    def __init__(
        self, redis: Redis, keys: Keys, name: str, *, max_jobs: int, max_bytes: int
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.name = name
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self.key = keys.key_batch(name)

    @property
    def active(self) -> bool:
        return self.max_jobs > 0 or self.max_bytes > 0

    async def pending(self) -> Usage:
        """Drop the jobs that have ended; what is left."""
        members = [m.decode() for m in await self.redis.zrange(self.key, 0, -1)]
        if not members:
            return Usage(0, 0)
        pipe = self.redis.pipeline(transaction=False)
        for member in members:
            job_id = member.rpartition(":")[0]
            pipe.exists(self.keys.batch_audio(job_id))
            pipe.hget(Job.key_for(job_id), "status")
        found = await pipe.execute()
        ended: list[str] = []
        jobs = size = 0
        for i, member in enumerate(members):
            stored, state = found[2 * i], found[2 * i + 1]
            if not stored or state in _ENDED:
                ended.append(member)
            else:
                jobs += 1
                size += int(member.rpartition(":")[2] or 0)
        if ended:
            await self.redis.zrem(self.key, *ended)
        return Usage(jobs, size)

    async def check(self, incoming: int = 0) -> None:
        """Before the upload is read: refuse a key at its job limit, or one that
        ``incoming`` bytes (a declared length; 0 if unknown) would take past its bytes."""
        usage = await self.pending()
        self._refuse_if_over(usage, incoming)

    async def reserve(self, job_id: str, size: int) -> None:
        """Count the stored upload of ``job_id`` in, atomically; :class:`LimitExceeded`
        when that would pass a bound."""
        admitted, jobs, used = await self.redis.eval(
            _RESERVE,
            1,
            self.key,
            _member(job_id, size),
            size,
            self.max_jobs,
            self.max_bytes,
            BATCH_AUDIO_TTL_S,
        )
        if not admitted:
            raise LimitExceeded(self._message(Usage(int(jobs), int(used)), size), RETRY_AFTER_S)

    async def release(self, job_id: str, size: int) -> None:
        """Give a place back (a job that was never enqueued)."""
        await self.redis.zrem(self.key, _member(job_id, size))

    def _refuse_if_over(self, usage: Usage, incoming: int) -> None:
        over_jobs = self.max_jobs > 0 and usage.jobs >= self.max_jobs
        over_bytes = self.max_bytes > 0 and usage.bytes + incoming > self.max_bytes
        if over_jobs or over_bytes:
            raise LimitExceeded(self._message(usage, incoming), RETRY_AFTER_S)

    def _message(self, usage: Usage, incoming: int) -> str:
        if self.max_jobs > 0 and usage.jobs >= self.max_jobs:
            return (
                f"Limit exceeded: {self.name!r} has {usage.jobs} batch jobs pending, "
                f"the most allowed (batch_key_max_jobs); try again when one has ended"
            )
        return (
            f"Limit exceeded: {self.name!r} has {usage.bytes} bytes of batch uploads "
            f"pending; {incoming} more would pass {self.max_bytes} (batch_key_max_bytes)"
        )
