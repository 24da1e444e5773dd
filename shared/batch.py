"""Batch transcription: whole files as rq jobs, decoded by the cluster's decoder workers.

The gateway (:mod:`gateway.batch`) stores an upload in Redis and enqueues a job on the
rq queue ``<prefix>-batch``; ``ksc batch-worker`` runs rq workers for that queue. A job
opens an ordinary session through the gateway's own path
(:class:`gateway.runner.SessionRunner`: admission, normalisation, the audio stream,
finals) and pushes the whole file as fast as Redis takes it, so a decoder worker
decodes it faster than real time.

**Capacity.** Live sessions come first: a job starts its session only while more than
``reserve_slots`` decoder slots are free cluster-wide (free minus waiting, as
:func:`shared.cluster.free_slots` counts them); otherwise it waits, polling with
backoff, in rq state ``started`` with phase ``waiting``. So with the default reserve
of 1 the last free slot always stays for a live client, and each batch process runs at
most ``jobs`` jobs at a time.

Jobs, their arguments and their results are stored with rq's JSON serializer, not
pickle: anyone who can write to Redis cannot make a worker run code, and
``redis-cli HGETALL rq:job:ID`` is readable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis as SyncRedis
from redis.sentinel import Sentinel
from rq import Queue
from rq.job import Job, JobStatus, get_current_job
from rq.serializers import JSONSerializer

from shared.client import Transcript
from shared.config import BatchWorkerSettings
from shared.keys import Keys
from shared.redis_client import RedisURLError, parse_url

log = logging.getLogger(__name__)

#: The job function, by the name rq imports it under.
JOB_FUNCTION = "shared.batch.transcribe_job"
#: Upload bytes handed to the session per piece.
_PIECE_BYTES = 256 * 1024
#: Polling for a free slot: first pause, longest pause (seconds).
_WAIT_FIRST_S, _WAIT_CAP_S = 0.25, 2.0

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


class BatchFailed(Exception):
    """A job's session ended with a status message; rq records the job as failed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"status {status}: {message}")
        self.status = status
        self.message = message


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


# --- the worker side --------------------------------------------------------------------

#: Set by :func:`run_worker` before rq forks; the job function reads it.
_settings: BatchWorkerSettings | None = None


def transcribe_job(request: dict[str, Any]) -> dict[str, Any]:
    """The rq job: decode one stored upload through the cluster; returns the result
    document (``text``, ``segments``, …) or raises :class:`BatchFailed`."""
    settings = _settings or BatchWorkerSettings()
    job = get_current_job()
    return asyncio.run(_transcribe(settings, JobRequest(**request), job))


def _set_phase(job: Job | None, phase: str) -> None:
    if job is not None and job.meta.get("phase") != phase:
        job.meta["phase"] = phase
        job.save_meta()  # type: ignore[no-untyped-call]


def _fail(job: Job | None, status: int, message: str) -> BatchFailed:
    if job is not None:
        job.meta["error"] = {"status": status, "message": message}
        job.save_meta()  # type: ignore[no-untyped-call]
    return BatchFailed(status, message)


async def _pieces(data: bytes) -> AsyncGenerator[Any, None]:
    from gateway.runner import EOS

    for start in range(0, len(data), _PIECE_BYTES):
        yield data[start : start + _PIECE_BYTES]
    yield EOS


class _NoSink:
    async def deliver(self, outcome: Any) -> None:
        pass


async def _transcribe(
    settings: BatchWorkerSettings, request: JobRequest, job: Job | None
) -> dict[str, Any]:
    # The gateway's session path, without its HTTP server: imported here so that the
    # module stays light for the gateway, the CLI and ``ksc status``.
    from gateway.runner import SessionRunner, SessionSpec
    from gateway.state import Gateway
    from shared import cluster
    from shared.config import GatewaySettings
    from shared.protocol import NoDecoderAvailable, Status

    gateway = Gateway(
        GatewaySettings(
            redis_url=settings.redis_url,
            prefix=settings.prefix,
            chunk_seconds=settings.chunk_seconds,
            claim_timeout=settings.claim_timeout,
            admission_wait=0.0,
            # rq's job timeout bounds a job; the file never pauses like a live client.
            max_session_seconds=0.0,
            idle_timeout=0.0,
        )
    )
    await gateway.start()
    try:
        data = await gateway.redis.get(request.audio_key)
        if data is None:
            raise _fail(job, int(Status.ABORTED), "The upload expired before the job ran")
        spec = SessionSpec(
            model=request.model,
            content_type=request.content_type,
            transport="batch",
            content_id=job.id if job is not None else "",
        )
        pause = _WAIT_FIRST_S
        while True:
            free = await cluster.free_slots(gateway.redis, gateway.keys, request.model)
            if free > settings.reserve_slots:
                _set_phase(job, "decoding")
                started = time.monotonic()
                runner = SessionRunner(gateway, spec, _pieces(data), _NoSink())
                core = await runner.run()
                elapsed = time.monotonic() - started
                failure = core.failure
                lost_race = isinstance(core.error, NoDecoderAvailable) or (
                    failure is not None and failure.status is Status.NOT_AVAILABLE
                )
                if not lost_race:
                    break
            _set_phase(job, "waiting")
            await asyncio.sleep(pause)
            pause = min(pause * 2, _WAIT_CAP_S)
        if failure is not None:
            raise _fail(job, int(failure.status), failure.message)
        await gateway.redis.delete(request.audio_key)
        duration = core.finals[-1].total if core.finals else 0.0
        return {
            "text": core.transcript,
            "segments": [
                {
                    "segment": f.segment,
                    "start": f.start,
                    "length": f.length,
                    "text": f.text,
                    "likelihood": f.likelihood,
                }
                for f in core.finals
            ],
            "duration": duration,
            "decode_seconds": round(elapsed, 3),
            "session": core.sid,
            "audio": runner.audio.kind if runner.audio is not None else None,
        }
    except Exception:  # failed, or broke: the upload is of no further use either way
        await gateway.redis.delete(request.audio_key)
        raise
    finally:
        await gateway.close()


def run_worker(settings: BatchWorkerSettings) -> int:
    """``ksc batch-worker``: ``settings.jobs`` rq workers on the batch queue, until SIGTERM
    (which lets running jobs finish: rq's warm shutdown)."""
    from rq.worker_pool import WorkerPool

    # Imported once here rather than in every job's forked process.
    import gateway.runner
    import gateway.state  # noqa: F401

    global _settings
    _settings = settings
    keys = Keys(settings.prefix)
    connection = connect_sync(settings.redis_url)
    log.info(
        "batch worker: %d job(s) at a time on queue %s, keeping %d slot(s) for live sessions",
        settings.jobs,
        keys.batch_queue,
        settings.reserve_slots,
    )
    pool = WorkerPool(
        [keys.batch_queue],
        connection=connection,
        num_workers=max(1, settings.jobs),
        serializer=JSONSerializer,
    )
    pool.start(burst=False, logging_level=settings.log_level.upper())
    return 0


# --- the client side (``ksc transcribe --batch``) ----------------------------------------


class SubmitError(Exception):
    """The gateway refused an upload: ``code`` is the HTTP status, ``message`` its reason."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"HTTP {code}: {message}")
        self.code = code
        self.message = message


def http_base(url: str) -> str:
    """``ws://host:port`` (the CLI's default form) -> ``http://host:port``."""
    url = url.rstrip("/")
    for ws, http in (("wss://", "https://"), ("ws://", "http://")):
        if url.startswith(ws):
            return http + url[len(ws) :]
    return url


def _call(request: urllib.request.Request) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            doc: dict[str, Any] = json.load(resp)
            return doc
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        try:
            message = str(json.loads(body).get("message", body))
        except ValueError:
            message = body
        raise SubmitError(exc.code, message) from None


def submit(base: str, data: bytes, *, model: str = "") -> str:
    """POST one file; returns the job id (:class:`SubmitError`, or OSError if unreachable)."""
    query = f"?{urllib.parse.urlencode({'model': model})}" if model else ""
    request = urllib.request.Request(
        f"{base}/v1/transcriptions{query}",
        data=data,
        method="POST",
        headers={"Content-Type": "application/octet-stream"},
    )
    return str(_call(request)["id"])


def status(base: str, job_id: str) -> dict[str, Any]:
    return _call(urllib.request.Request(f"{base}/v1/transcriptions/{job_id}"))


def wait(base: str, job_id: str, *, interval: float = 0.5) -> dict[str, Any]:
    """Poll until the job has finished or failed; returns its last document."""
    while True:
        doc = status(base, job_id)
        if doc["state"] in ("finished", "failed"):
            return doc
        time.sleep(interval)


def as_transcript(doc: dict[str, Any]) -> Transcript:
    """A finished job's segments as the messages a streaming session would have sent,
    so :func:`shared.transcribe.render` writes every format from either."""
    result = Transcript()
    for seg in doc.get("segments", []):
        result.messages.append(
            {
                "status": 0,
                "id": doc["id"],
                "segment": seg["segment"],
                "result": {
                    "hypotheses": [{"transcript": seg["text"], "likelihood": seg["likelihood"]}],
                    "final": True,
                },
                "segment-start": seg["start"],
                "segment-length": seg["length"],
                "total-length": doc.get("duration", 0.0),
            }
        )
    return result
