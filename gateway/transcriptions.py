"""The batch API: ``POST /v1/transcriptions`` and ``GET /v1/transcriptions/{id}``.

A submission is the audio as the raw request body (``Content-Type`` as for
``/client/dynamic/recognize``: ``audio/x-raw, rate=…, format=…, channels=…`` for raw
PCM, anything else means "detect from the bytes") or a ``multipart/form-data`` form
with the audio in the field ``file`` (its part's ``Content-Type`` counts the same
way). ``?model=`` picks a model. The upload is stored in Redis (every gateway replica
and batch worker sees it; bounded by ``batch_max_bytes``) and an rq job is enqueued
(:mod:`batch_worker` runs it). The answer is ``202 {"id": …, "state": "queued"}`` with
a ``Location`` to poll.

==============================================  ====  =====================================
what                                            HTTP  body
==============================================  ====  =====================================
accepted                                        202   ``{"id", "state", "location"}``
larger than ``batch_max_bytes``                 413   status 5 and the limit
empty, malformed ``Content-Type``, no ``file``  400   status 5 and why
a model not offered (``models`` allow-list)     400   status 8 and the models offered
the key's pending jobs or bytes are at the       429   status 6, which bound; ``Retry-After``
bound (``batch_key_max_jobs``/``_bytes``)
no worker serves the model at the moment        503   status 9, ``Retry-After``
not audio the gateway can read (by its magic)   415   status 5 and the formats it reads
Redis unavailable                               503   status 9
==============================================  ====  =====================================

Audio that starts like a known format but does not decode fails in the job: the job
ends ``failed`` with the session's status message.

Each API key (with authentication off: every client together) may have a bounded
amount of batch work pending (:mod:`gateway.batch_quota`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import suppress
from typing import Any

from aiohttp import BodyPartReader, web
from redis import Redis as SyncRedis
from redis.exceptions import RedisError

from gateway.admission import choose_model
from gateway.audio import parse_caps
from gateway.auth import principal_name
from gateway.batch_quota import BatchQuota
from gateway.formats import SNIFF_BYTES, sniff
from gateway.http import RETRY_AFTER_S
from gateway.logtext import printable
from gateway.state import GATEWAY, Gateway
from gateway.status import STATUS_INTERVAL_S, Cached
from shared import jobs
from shared.keys import BATCH_AUDIO_TTL_S
from shared.protocol import (
    BadRequest,
    ErrorReply,
    LimitExceeded,
    NoDecoderAvailable,
    Status,
    UnknownModel,
    UnsupportedAudio,
    to_json,
)
from shared.redis_client import RedisURLError

log = logging.getLogger(__name__)

TRANSCRIPTIONS = "/v1/transcriptions"
_JSON = "application/json"
_READ_BYTES = 1024 * 1024


class _Rq:
    """The blocking rq client of this gateway, made on first use; calls run on threads."""

    def __init__(self) -> None:
        self.connection: SyncRedis | None = None
        #: the job counts ``/status`` shows, read at most once per status interval
        self.counts: Cached[dict[str, int] | None] | None = None

    def get(self, gateway: Gateway) -> SyncRedis:
        if self.connection is None:
            self.connection = jobs.connect_sync(gateway.settings.redis_url)
        return self.connection

    async def close(self, app: web.Application) -> None:
        if self.counts is not None:
            await self.counts.close()
        if self.connection is not None:
            self.connection.close()


_RQ = web.AppKey("batch_rq", _Rq)


def add_routes(app: web.Application) -> None:
    """Register the batch API on ``app`` (called by :func:`gateway.app.create_app`)."""
    app[_RQ] = rq = _Rq()
    rq.counts = Cached(lambda: _job_counts(app), STATUS_INTERVAL_S)
    app.on_cleanup.append(rq.close)
    app.router.add_post(TRANSCRIPTIONS, handle_submit)
    app.router.add_get(TRANSCRIPTIONS + "/{id}", handle_get)


def _error(
    code: int, message: str, status: Status = Status.NOT_ALLOWED, *, retry_after: bool = False
) -> web.Response:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if retry_after else {}
    body = ErrorReply(status, message).serialize()
    return web.Response(status=code, text=body, content_type=_JSON, headers=headers)


def _limited(exc: LimitExceeded) -> web.Response:
    body = ErrorReply(Status.SERVICE_NOT_ALLOWED, str(exc)).serialize()
    headers = {"Retry-After": str(exc.retry_after)}
    return web.Response(status=429, text=body, content_type=_JSON, headers=headers)


def _unavailable(exc: Exception) -> web.Response:
    """Redis could not be reached: the detail goes to the log, not to the client."""
    log.warning("batch: Redis unavailable: %s", exc)
    return _error(503, "Redis unavailable; try again later", Status.NOT_AVAILABLE, retry_after=True)


class _TooLarge(Exception):
    pass


async def _read_limited(stream: Any, limit: int) -> bytes:
    """Read a body (or a form part) of at most ``limit`` bytes; :class:`_TooLarge` past it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        data = (
            await stream.read_chunk(_READ_BYTES)
            if isinstance(stream, BodyPartReader)
            else await stream.read(_READ_BYTES)
        )
        if not data:
            return b"".join(chunks)
        size += len(data)
        if size > limit:
            raise _TooLarge()
        chunks.append(data)


async def _upload(request: web.Request, limit: int) -> tuple[bytes, str, str]:
    """(audio, content type, file name) from a raw body or a form's ``file`` field."""
    if request.content_type == "multipart/form-data":
        reader = await request.multipart()
        async for part in reader:
            if isinstance(part, BodyPartReader) and part.name == "file":
                content_type = part.headers.get("Content-Type", "")
                data = await _read_limited(part, limit)
                return data, content_type, part.filename or ""
        raise BadRequest("No form field 'file' with the audio")
    return await _read_limited(request.content, limit), request.headers.get("Content-Type", ""), ""


async def handle_submit(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    settings = gateway.settings
    limit = settings.batch_max_bytes
    too_large = f"Upload larger than {limit} bytes (batch_max_bytes)"
    multipart = request.content_type == "multipart/form-data"
    if (request.content_length or 0) > limit and not multipart:
        return _error(413, too_large)
    quota = BatchQuota(
        gateway.redis,
        gateway.keys,
        principal_name(),
        max_jobs=settings.batch_key_max_jobs,
        max_bytes=settings.batch_key_max_bytes,
    )
    if quota.active:  # before the upload is read
        try:
            await quota.check(0 if multipart else request.content_length or 0)
        except LimitExceeded as exc:
            return _limited(exc)
        except (RedisError, OSError) as exc:
            return _unavailable(exc)
    model = request.query.get("model", settings.model)
    try:
        data, content_type, filename = await _upload(request, limit)
        if not data:
            raise BadRequest("Empty upload: no audio")
        if parse_caps(content_type) is None:
            sniff(data[:SNIFF_BYTES], final=True)
    except _TooLarge:
        return _error(413, too_large)
    except UnsupportedAudio as exc:
        return _error(415, str(exc))
    except BadRequest as exc:
        return _error(400, str(exc))
    job_id = uuid.uuid4().hex
    keys = gateway.keys
    request_ = jobs.JobRequest(
        model=model,
        content_type=content_type,
        audio_key=keys.batch_audio(job_id),
        filename=filename,
    )
    stored = reserved = False
    try:
        await choose_model(
            gateway.redis, keys, model, default=settings.model, allowed=settings.models
        )
        await gateway.redis.set(request_.audio_key, data, ex=BATCH_AUDIO_TTL_S)
        stored = True
        if quota.active:  # the upload is stored first: a counted job always has it
            await quota.reserve(job_id, len(data))
            reserved = True
        rq = request.app[_RQ]
        await asyncio.to_thread(lambda: _enqueue(rq.get(gateway), gateway, job_id, request_))
        stored = reserved = False  # the job owns them now
    except UnknownModel as exc:
        return _error(400, str(exc), Status.LANGUAGE_NOT_SUPPORTED)
    except NoDecoderAvailable:
        message = f"No decoder serves model {model[:64]!r} now; try again later"
        return _error(503, message, Status.NOT_AVAILABLE, retry_after=True)
    except LimitExceeded as exc:
        return _limited(exc)
    except RedisURLError as exc:
        return _error(503, str(exc), Status.NOT_AVAILABLE)
    except (RedisError, OSError) as exc:
        return _unavailable(exc)
    finally:
        with suppress(RedisError, OSError):
            if reserved:
                await quota.release(job_id, len(data))
            if stored:
                await gateway.redis.delete(request_.audio_key)
    location = f"{TRANSCRIPTIONS}/{job_id}"
    log.info(
        "batch job %s queued for %s: %d bytes, model %s",
        job_id,
        printable(quota.name),
        len(data),
        printable(model),
    )
    return web.json_response(
        {"id": job_id, "state": "queued", "location": location},
        status=202,
        headers={"Location": location},
    )


def _enqueue(
    connection: SyncRedis, gateway: Gateway, job_id: str, request: jobs.JobRequest
) -> None:
    settings = gateway.settings
    jobs.queue(connection, gateway.keys).enqueue(
        jobs.JOB_FUNCTION,
        kwargs={"request": request.__dict__},
        job_id=job_id,
        result_ttl=settings.batch_result_ttl,
        failure_ttl=settings.batch_result_ttl,
        job_timeout=settings.batch_job_timeout,
        description=f"transcribe {request.filename or job_id} ({request.model})",
    )


async def handle_get(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    job_id = request.match_info["id"]

    def look() -> dict[str, Any] | None:
        connection = request.app[_RQ].get(gateway)
        job = jobs.fetch(connection, job_id)
        return jobs.describe(job) if job is not None else None

    try:
        doc = await asyncio.to_thread(look)
    except RedisURLError as exc:
        return _error(503, str(exc), Status.NOT_AVAILABLE)
    except (RedisError, OSError) as exc:
        return _unavailable(exc)
    if doc is None:
        return _error(404, f"No transcription job {job_id!r} (never submitted, or expired)")
    return web.json_response(doc, dumps=to_json)


async def job_counts(app: web.Application) -> dict[str, int] | None:
    """Batch jobs by state for ``/status`` (at most one read per status interval);
    None when the queue cannot be read."""
    counts = app[_RQ].counts
    return await counts.get() if counts is not None else await _job_counts(app)


async def _job_counts(app: web.Application) -> dict[str, int] | None:
    gateway = app[GATEWAY]
    rq = app[_RQ]
    try:
        return await asyncio.to_thread(lambda: jobs.counts(rq.get(gateway), gateway.keys))
    except (RedisError, OSError, RedisURLError) as exc:
        log.debug("batch counts: %s", exc)
        return None
