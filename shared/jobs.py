"""Batch jobs on rq: the queue both sides share, and what a job looks like from outside.

The gateway (:mod:`gateway.transcriptions`) stores an upload in Redis and enqueues a
job on the rq queue ``<prefix>-batch``; ``ksc batch-worker`` (:mod:`batch_worker`)
runs it; ``ksc status`` counts the jobs. This module is what those three agree on:
the connection (standalone or Sentinel), the queue, the job's request, the function
name a job gives, and the document ``GET /v1/transcriptions/{id}`` answers.

Jobs, their arguments and their results are stored with rq's JSON serializer, so
``redis-cli HGETALL rq:job:ID`` is readable. The serializer is no security boundary:
plain rq imports and calls whatever function a job names (a JSON job naming
``subprocess.getoutput`` runs a shell command). The batch worker therefore runs only
the functions it knows (:data:`batch_worker.pool.JOB_FUNCTIONS`) and fails any other
job without importing anything. Redis stays the trust boundary
(``docs/security.md``): whoever can write it controls sessions, results and which
jobs run on which stored audio.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis as SyncRedis
from redis.sentinel import Sentinel
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from shared.keys import Keys
from shared.redis_client import RedisURLError, parse_url

#: The job function, by the name jobs give it (:data:`batch_worker.pool.JOB_FUNCTIONS`).
JOB_FUNCTION = "batch_worker.job.transcribe_job"

#: rq's job statuses -> the four states the API reports.
_STATES = {
    JobStatus.CREATED: "queued",
    JobStatus.QUEUED: "queued",
    JobStatus.DEFERRED: "queued",
    JobStatus.SCHEDULED: "queued",
    JobStatus.STARTED: "started",
    JobStatus.FINISHED: "finished",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "failed",
    JobStatus.CANCELED: "failed",
}
STATES = ("queued", "started", "finished", "failed")


def connect_sync(url: str) -> SyncRedis:
    """A blocking client for rq (which is not asyncio): standalone or Sentinel URLs.

    rq's multi-key commands do not work on Redis Cluster, so a Cluster URL is refused
    with :class:`~shared.redis_client.RedisURLError`.
    """
    target = parse_url(url)
    if target.kind == "standalone":
        return SyncRedis.from_url(target.url)
    if target.kind == "cluster":
        raise RedisURLError("batch jobs (rq) need a standalone or Sentinel Redis, not Cluster")
    tls: dict[str, Any] = {"ssl": True} if target.tls else {}
    sentinel = Sentinel(
        list(target.hosts),
        sentinel_kwargs={"password": target.sentinel_password, **tls},
        **tls,
    )
    client: SyncRedis = sentinel.master_for(
        target.master, db=target.db, username=target.username, password=target.password
    )
    return client


def queue(connection: SyncRedis, keys: Keys) -> Queue:
    return Queue(keys.batch_queue, connection=connection, serializer=JSONSerializer)


def fetch(connection: SyncRedis, job_id: str) -> Job | None:
    """The job, or None when there is no such job (never was, or expired)."""
    if not job_id.isalnum():
        return None
    job = Job.fetch_many([job_id], connection=connection, serializer=JSONSerializer)[0]
    return job


@dataclass(frozen=True)
class JobRequest:
    """What a job is asked to do; the audio itself waits under ``audio_key``."""

    model: str
    content_type: str
    audio_key: str
    filename: str = ""


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def describe(job: Job) -> dict[str, Any]:
    """The ``GET /v1/transcriptions/{id}`` document of a job."""
    status = job.get_status(refresh=False)
    state = _STATES.get(status, "queued") if status is not None else "queued"
    doc: dict[str, Any] = {
        "id": job.id,
        "state": state,
        "created": _iso(job.created_at),
        "started": _iso(job.started_at),
        "ended": _iso(job.ended_at),
    }
    request = job.kwargs.get("request") or {}
    doc["model"] = request.get("model", "")
    doc["filename"] = request.get("filename", "")
    if state == "queued":
        doc["position"] = job.get_position()
    elif state == "started":
        doc["phase"] = job.meta.get("phase", "starting")
    elif state == "finished":
        doc.update(job.return_value() or {})
    else:
        error = job.meta.get("error")
        if error is None:  # killed (timeout, worker lost) before it could say why
            result = job.latest_result()
            lines = (result.exc_string if result is not None else "") or ""
            last = lines.strip().splitlines()[-1:] or [f"job {status}"]
            error = {"status": 2, "message": last[0]}
        doc.update(error)
    return doc


def counts(connection: SyncRedis, keys: Keys) -> dict[str, int]:
    """Jobs by state: waiting in the queue, running, and still remembered as ended."""
    q = queue(connection, keys)
    return {
        "queued": q.count,
        "started": q.started_job_registry.count,
        "finished": q.finished_job_registry.count,
        "failed": q.failed_job_registry.count,
    }
