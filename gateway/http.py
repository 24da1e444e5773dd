"""kaldi-gstreamer-server's HTTP API: ``/client/dynamic/recognize`` and ``/reference``.

**Recognition** (PUT or POST): the request body is the audio, sized or chunked. It is
a session like a websocket's, run by the same :class:`~gateway.runner.SessionRunner`:
the body is read as it arrives and its audio goes onto the session's stream at once,
so decoding runs while the upload does. The end of the body is ``EOS``; the reply
waits for the last final::

    {"status": 0, "id": "…", "hypotheses": [{"utterance": "the finals joined by spaces"}]}

The hypothesis also carries ``word-alignment`` (the finals' words with their times, as
on the websocket) when the finals have word times.

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
with a ``Content-Id`` header (and optionally ``User-Id``). References belong to the
API key that posted them (with authentication off: to every client together): a
Redis hash per key (:meth:`~shared.keys.Keys.key_references`), at most
``reference_max_bytes`` a text (413 above), ``reference_max_count`` texts a key (past
it the least recently written one is dropped) and kept ``reference_ttl`` seconds after
the key's last write. ``GET ?content-id=ID`` returns one (reading that field only), or
404; ``GET ?content-id=A&content-id=B`` those of the listed ids that exist (up to
:data:`MAX_IDS_PER_GET`), keyed by content id; ``GET`` without an id lists the key's
references as the original's ``reference-content.json`` document.

**CORS**: ``OPTIONS`` preflights are answered on both paths, and every reply carries
``Access-Control-Allow-Origin`` for an allowed origin (setting ``cors_origins``:
``*`` or a comma-separated list of origins; an origin listed in ``allowed_origins``
too). Which pages may send requests at all is the Origin check's business
(:mod:`gateway.origins`): ``*`` here lets no foreign page past it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import PayloadEncodingError
from redis.exceptions import RedisError

from gateway.auth import principal_name
from gateway.core import Outcome, SessionCore
from gateway.logtext import printable
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
from shared.wire import word_alignment

log = logging.getLogger(__name__)

RECOGNIZE = "/client/dynamic/recognize"
REFERENCE = "/client/dynamic/reference"
#: Seconds a client is asked to wait after a 503 before it tries again.
RETRY_AFTER_S = 5
#: The longest ``Content-Id`` and ``User-Id`` of a reference, characters.
MAX_ID_CHARS = 256
#: The most content ids one ``GET`` of references may ask for.
MAX_IDS_PER_GET = 100

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


def _origin_set(raw: str) -> frozenset[str]:
    return frozenset(o.strip().rstrip("/") for o in raw.split(",") if o.strip())


def _allowed_origins(gateway: Gateway) -> frozenset[str] | None:
    """Origins whose pages may read replies: ``None`` when ``cors_origins`` is ``*``.

    An origin ``allowed_origins`` lets past the Origin check may read its replies too.
    """
    settings = gateway.settings
    cors = _origin_set(settings.cors_origins)
    if "*" in cors:
        return None
    return cors | _origin_set(settings.allowed_origins)


def _cors_headers(request: web.Request) -> dict[str, str]:
    allowed = _allowed_origins(request.app[GATEWAY])
    if allowed is None:
        return {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "Retry-After"}
    origin = request.headers.get("Origin", "")
    if origin and (origin in allowed or "*" in allowed):
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
        alignment = [e for final in core.finals for e in word_alignment(final.words) or ()]
        body = RecognitionReply(core.sid, core.transcript, alignment or None).serialize()
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

# KEYS[1] the key's texts (hash), KEYS[2] their write times (zset, ms);
# ARGV: content id, entry, most texts kept (0: no bound), TTL s (0: none).
# Returns how many older texts were dropped to make room.
_STORE_REFERENCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
local dropped = 0
local most = tonumber(ARGV[3])
if most > 0 then
  local excess = redis.call('ZCARD', KEYS[2]) - most
  if excess > 0 then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, excess - 1)) do
      redis.call('HDEL', KEYS[1], id)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
    dropped = excess
  end
end
local ttl = tonumber(ARGV[4])
for _, key in ipairs(KEYS) do
  if ttl > 0 then redis.call('EXPIRE', key, ttl) else redis.call('PERSIST', key) end
end
return dropped
"""


def _error(code: int, message: str) -> web.Response:
    body = ErrorReply(Status.NOT_ALLOWED, message).serialize()
    return web.Response(status=code, text=body, content_type=_JSON)


def _redis_unavailable(exc: Exception) -> web.Response:
    log.warning("references: Redis unavailable: %s", exc)
    body = ErrorReply(Status.NOT_AVAILABLE, "Redis unavailable; try again later").serialize()
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    return web.Response(status=503, text=body, content_type=_JSON, headers=headers)


async def handle_reference_post(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    settings = gateway.settings
    limit = settings.reference_max_bytes
    content_id = request.headers.get("Content-Id", "").strip()
    user_id = request.headers.get("User-Id", "")
    if not content_id:
        return _error(400, "No Content-Id specified")
    if len(content_id) > MAX_ID_CHARS or len(user_id) > MAX_ID_CHARS:
        return _error(400, f"Content-Id and User-Id: at most {MAX_ID_CHARS} characters")
    if (request.content_length or 0) > limit:
        return _error(413, f"Reference text larger than {limit} bytes (reference_max_bytes)")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        return _error(413, f"Reference text larger than {limit} bytes (reference_max_bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _error(400, "Reference text is not UTF-8")
    reference = Reference(
        content_id=content_id,
        content=text,
        user_id=user_id,
        time=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    name = principal_name()
    keys = gateway.keys
    try:
        dropped = await gateway.redis.eval(
            _STORE_REFERENCE,
            2,
            keys.key_references(name),
            keys.key_reference_times(name),
            content_id,
            reference.value(),
            settings.reference_max_count,
            settings.reference_ttl,
        )
    except (RedisError, OSError) as exc:
        return _redis_unavailable(exc)
    log.info(
        "reference stored for content %s (user %s) of %s; %d older dropped",
        printable(content_id),
        printable(user_id),
        printable(name),
        int(dropped),
    )
    return web.Response(text=reference.serialize(), content_type=_JSON)


async def handle_reference_get(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    key = gateway.keys.key_references(principal_name())
    wanted = list(dict.fromkeys(request.query.getall("content-id", [])))
    if len(wanted) > MAX_IDS_PER_GET:
        return _error(400, f"At most {MAX_IDS_PER_GET} content ids a request")
    try:
        if len(wanted) == 1:
            value = await gateway.redis.hget(key, wanted[0])
            if value is None:
                return _error(404, f"No reference for content id {wanted[0][:MAX_ID_CHARS]!r}")
            reply = Reference.parse(wanted[0], value).serialize()
            return web.Response(text=reply, content_type=_JSON)
        total = None
        if not wanted:  # the most recently written, never the whole hash
            times = gateway.keys.key_reference_times(principal_name())
            pipe = gateway.redis.pipeline(transaction=False)
            pipe.zcard(times)
            pipe.zrevrange(times, 0, MAX_IDS_PER_GET - 1)
            total, newest = await pipe.execute()
            wanted = [cid.decode() for cid in newest]
        values = await gateway.redis.hmget(key, wanted) if wanted else []
        entries = {cid: v for cid, v in zip(wanted, values, strict=True) if v is not None}
    except (RedisError, OSError) as exc:
        return _redis_unavailable(exc)
    references = sorted(
        (Reference.parse(cid, value) for cid, value in entries.items()),
        key=lambda r: r.content_id,
    )
    headers = {} if total is None else {"X-Total-Count": str(total)}
    return web.Response(text=serialize_references(references), content_type=_JSON, headers=headers)
