"""kaldi-gstreamer-server's HTTP API: ``/client/dynamic/recognize`` and ``/reference``.

**Recognition** (PUT or POST): the request body is the audio, sized or chunked. It is
a session like a websocket's, run by the same :class:`~gateway.runner.SessionRunner`:
the body is read as it arrives and its audio goes onto the session's stream at once,
so decoding runs while the upload does. The end of the body is ``EOS``; the reply
waits for the last final::

    {"status": 0, "id": "…", "hypotheses": [{"utterance": "the finals joined by spaces"}]}

``Content-Type`` ``audio/x-raw`` or ``audio/x-raw-int`` with ``rate``, ``format`` and
``channels`` parameters (``;`` or ``,`` between them; default 16000 Hz, S16LE, mono)
is raw PCM; any other type, or none, means "detect the format from the bytes".
``?model=`` picks a model as on the websocket. ``device-id`` and ``content-id``
headers are logged.

Errors carry the status message as JSON (``{"status": N, "message": …, "id": …}``)
with an HTTP code that says what went wrong (the original answers 200 for all but
"no worker"):

===================================================  ====  ==============================
what                                                 HTTP  why
===================================================  ====  ==============================
no decoder free (status 9)                           503   ``Retry-After`` says when
malformed ``Content-Type`` (status 5)                400   the request itself is wrong
audio the gateway cannot decode (status 5)           415   RFC 9110: unsupported content,
                                                           by its type or by inspection
the decoder failed (status 2)                        500   not the client's fault
the decoder fell behind real time (status 2)         503   overloaded; ``Retry-After``
no body data for ``idle_timeout``, or the session    408   RFC 9110: request timeout
ran past ``max_session_seconds`` (status 2)
a per-key limit is used up (status 6)                429   ``Retry-After`` says when
no or a wrong credential (auth on)                   401   before the body is read
unknown ``?model=`` (status 8)                       404   no such model here
bad ``?phrases=`` list or unknown word (status 7)    400   the request itself is wrong
no speech for ``silence_timeout`` (status 1)         200   an answer: there was no speech
===================================================  ====  ==============================

**References** (:class:`~shared.protocol.Reference`): ``POST`` a UTF-8 text body
with a ``Content-Id`` header (and optionally ``User-Id``); it is stored in the Redis
hash ``<prefix>:references`` (no expiry). ``GET`` lists them all as the original's
``reference-content.json`` document; ``GET ?content-id=ID`` returns one, or 404.

**CORS**: ``OPTIONS`` preflights are answered on both paths, and every reply carries
``Access-Control-Allow-Origin`` for an allowed origin (setting ``cors_origins``:
``*`` or a comma-separated list of origins).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import PayloadEncodingError

from gateway.core import Outcome, SessionCore
from gateway.runner import EOS, AudioSource, SessionRunner, SessionSpec
from gateway.state import GATEWAY, Gateway
from shared.protocol import (
    BadRequest,
    ErrorReply,
    FellBehind,
    LimitExceeded,
    NoDecoderAvailable,
    RecognitionReply,
    Reference,
    Status,
    TimedOut,
    UnsupportedAudio,
    phrases_param,
    serialize_references,
)

log = logging.getLogger(__name__)

RECOGNIZE = "/client/dynamic/recognize"
REFERENCE = "/client/dynamic/reference"
#: Seconds a client is asked to wait after a 503 before it tries again.
RETRY_AFTER_S = 5
#: The largest reference text accepted, bytes.
MAX_REFERENCE_BYTES = 1024 * 1024

_JSON = "application/json"
_ALLOW_HEADERS = (
    "Content-Type, Content-Id, Device-Id, User-Id, Accept, Origin, X-Csrftoken, "
    "Authorization, X-API-Key"
)
_PREFLIGHT_MAX_AGE_S = 600

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application) -> None:
    """Register the HTTP API on ``app`` (called by :func:`gateway.app.create_app`)."""
    for method in ("PUT", "POST"):
        app.router.add_route(method, RECOGNIZE, _with_cors(handle_recognize))
    app.router.add_route("OPTIONS", RECOGNIZE, _preflight("POST, PUT, OPTIONS"))
    app.router.add_post(REFERENCE, _with_cors(handle_reference_post))
    app.router.add_get(REFERENCE, _with_cors(handle_reference_get))
    app.router.add_route("OPTIONS", REFERENCE, _preflight("GET, POST, OPTIONS"))


# --- CORS ------------------------------------------------------------------------------


def _allowed_origins(gateway: Gateway) -> frozenset[str] | None:
    """The ``cors_origins`` setting: ``None`` allows any origin."""
    raw = gateway.settings.cors_origins
    origins = frozenset(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    return None if "*" in origins else origins


def _cors_headers(request: web.Request) -> dict[str, str]:
    allowed = _allowed_origins(request.app[GATEWAY])
    if allowed is None:
        return {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "Retry-After"}
    origin = request.headers.get("Origin", "")
    if origin and origin in allowed:
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": "Retry-After",
            "Vary": "Origin",
        }
    return {"Vary": "Origin"}


def _with_cors(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        response = await handler(request)
        response.headers.update(_cors_headers(request))
        return response

    return wrapped


def _preflight(methods: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        headers = _cors_headers(request)
        if "Access-Control-Allow-Origin" not in headers:
            body = ErrorReply(Status.NOT_ALLOWED, "Origin not allowed").serialize()
            return web.Response(status=403, text=body, content_type=_JSON, headers=headers)
        headers.update(
            {
                "Access-Control-Allow-Methods": methods,
                "Access-Control-Allow-Headers": _ALLOW_HEADERS,
                "Access-Control-Max-Age": str(_PREFLIGHT_MAX_AGE_S),
            }
        )
        return web.Response(status=204, headers=headers)

    return handle


# --- recognition -----------------------------------------------------------------------


async def handle_recognize(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    spec = SessionSpec(
        model=request.query.get("model", gateway.settings.model),
        content_type=request.headers.get("Content-Type", ""),
        transport="http",
        user_id=request.headers.get("Device-Id", ""),
        content_id=request.headers.get("Content-Id", ""),
        phrases=phrases_param(request.query["phrases"]) if "phrases" in request.query else None,
    )
    core = await SessionRunner(gateway, spec, _body(request), _VerdictSink()).run()
    return _reply(core)


async def _body(request: web.Request) -> AudioSource:
    """The request body as audio pieces as they arrive, then ``EOS``."""
    try:
        async for data in request.content.iter_any():
            if data:
                yield data
    except (ConnectionError, PayloadEncodingError):
        return  # the client went away mid-upload: no EOS, the session is aborted
    yield EOS


class _VerdictSink:
    """HTTP answers once, at the end, from the core's finals and verdict."""

    async def deliver(self, outcome: Outcome) -> None:
        pass


def _reply(core: SessionCore) -> web.Response:
    failure = core.failure
    if failure is None:
        body = RecognitionReply(core.sid, core.transcript).serialize()
        return web.Response(text=body, content_type=_JSON)
    headers: dict[str, str] = {}
    error = core.error
    if isinstance(error, NoDecoderAvailable) or failure.status is Status.NOT_AVAILABLE:
        code = 503
        headers["Retry-After"] = str(RETRY_AFTER_S)
    elif isinstance(error, LimitExceeded):
        code = 429
        headers["Retry-After"] = str(error.retry_after)
    elif isinstance(error, FellBehind):
        code = 503
        headers["Retry-After"] = str(RETRY_AFTER_S)
    elif isinstance(error, TimedOut):
        code = 408
    elif isinstance(error, UnsupportedAudio):
        code = 415
    elif isinstance(error, BadRequest) or failure.status is Status.NOT_ALLOWED:
        code = 400
    elif failure.status is Status.LANGUAGE_NOT_SUPPORTED:
        code = 404
    elif failure.status is Status.BAD_GRAMMAR:
        code = 400  # the client's phrase list
    elif failure.status is Status.NO_SPEECH:
        code = 200  # an answer, not an error: the audio held no speech
    else:
        code = 500
    return web.Response(status=code, text=failure.serialize(), content_type=_JSON, headers=headers)


# --- references ------------------------------------------------------------------------


def _error(code: int, message: str) -> web.Response:
    body = ErrorReply(Status.NOT_ALLOWED, message).serialize()
    return web.Response(status=code, text=body, content_type=_JSON)


async def handle_reference_post(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    content_id = request.headers.get("Content-Id", "").strip()
    if not content_id:
        return _error(400, "No Content-Id specified")
    if (request.content_length or 0) > MAX_REFERENCE_BYTES:
        return _error(413, f"Reference text larger than {MAX_REFERENCE_BYTES} bytes")
    raw = await request.content.read(MAX_REFERENCE_BYTES + 1)
    if len(raw) > MAX_REFERENCE_BYTES:
        return _error(413, f"Reference text larger than {MAX_REFERENCE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _error(400, "Reference text is not UTF-8")
    reference = Reference(
        content_id=content_id,
        content=text,
        user_id=request.headers.get("User-Id", ""),
        time=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    await gateway.redis.hset(gateway.keys.references, content_id, reference.value())
    log.info("reference stored for content %r (user %r)", content_id, reference.user_id)
    return web.Response(text=reference.serialize(), content_type=_JSON)


async def handle_reference_get(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    key = gateway.keys.references
    content_id = request.query.get("content-id")
    if content_id is not None:
        value = await gateway.redis.hget(key, content_id)
        if value is None:
            return _error(404, f"No reference for content id {content_id!r}")
        return web.Response(text=Reference.parse(content_id, value).serialize(), content_type=_JSON)
    entries = await gateway.redis.hgetall(key)
    references = sorted(
        (Reference.parse(k.decode(), v) for k, v in entries.items()),
        key=lambda r: r.content_id,
    )
    return web.Response(text=serialize_references(references), content_type=_JSON)
