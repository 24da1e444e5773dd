"""The rq job: one stored upload decoded through the cluster (``shared.jobs.JOB_FUNCTION``).

rq runs :func:`transcribe_job` in a fork of one of the pool's workers, found by the
name the job gives through :data:`batch_worker.pool.JOB_FUNCTIONS` (never imported by
that name), so the batch worker's settings reach it through :func:`configure`, called
once before the pool forks.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rq.job import Job, get_current_job

from gateway.core import Outcome
from gateway.runner import EOS, AudioSource, SessionRunner, SessionSpec
from gateway.state import Gateway
from shared import cluster
from shared.config import BatchWorkerSettings, GatewaySettings
from shared.jobs import JobRequest
from shared.protocol import NoDecoderAvailable, Status

#: Upload bytes handed to the session per piece.
_PIECE_BYTES = 256 * 1024
#: Polling for a free slot: first pause, longest pause (seconds).
_WAIT_FIRST_S, _WAIT_CAP_S = 0.25, 2.0

_settings: BatchWorkerSettings | None = None


def configure(settings: BatchWorkerSettings) -> None:
    """Give the jobs of this process (and of the forks rq makes of it) their settings."""
    global _settings
    _settings = settings


class BatchFailed(Exception):
    """A job's session ended with a status message; rq records the job as failed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"status {status}: {message}")
        self.status = status
        self.message = message


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


async def _pieces(data: bytes) -> AudioSource:
    for start in range(0, len(data), _PIECE_BYTES):
        yield data[start : start + _PIECE_BYTES]
    yield EOS


class _NoSink:
    """A job has no client to stream to: the result is what the core keeps."""

    async def deliver(self, outcome: Outcome) -> None:
        pass


async def _transcribe(
    settings: BatchWorkerSettings, request: JobRequest, job: Job | None
) -> dict[str, Any]:
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
                    # the decoder's words, times in seconds from the start of the
                    # audio; None when the segment has no word times
                    "words": f.words,
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
