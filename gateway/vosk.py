"""vosk-server's websocket dialect, at ``/`` (with an upgrade) and ``/vosk``.

A transport around :class:`~gateway.runner.SessionRunner`, as :mod:`gateway.speech` is
for kaldi-gstreamer-server's dialect; the session itself (admission, audio, worker
events, status codes) is the same. What differs is the conversation:

* ``{"config": {...}}`` — optional, before any audio: ``sample_rate`` (default
  16000), ``phrase_list`` (a grammar; as in vosk-server, empty phrases and words the
  model lacks are dropped, and only a list with no usable phrase is refused, status
  7), ``words`` (word entries in finals, on by default as in vosk-server, see below),
  ``max_alternatives`` (0 only; alternatives need an n-best list kaldi-active-grammar
  does not produce, so more is refused). Like vosk-server, a config gets no reply.
* binary frames — 16-bit little-endian mono PCM at ``sample_rate`` (the gateway
  resamples to the model's rate). Each gets exactly one reply: the oldest final not
  yet sent as ``{"text": …}``, else ``{"partial": …}`` with the open segment's best
  path. Decoding runs on a worker, so a reply carries what is ready when the frame
  arrives, not the result of that very frame.
* ``{"eof": 1}`` — ends the audio. Its reply, once the worker finished, is one
  ``{"text": …}`` with every final not sent yet (joined by spaces, ``""`` if none);
  then the socket closes, as vosk-server closes after its final result.
* ``{"reset": 1}`` — replies ``{"text": …}`` with the finals ready and not yet sent
  (``""`` if none); segmentation goes on by the server's own endpointing, the open
  segment is not cut short.

With ``words`` on, a ``{"text"}`` reply carries its finals' words first, as
vosk-server's does: ``{"result": [{"conf", "end", "start", "word"}, …], "text": …}``,
times in seconds from the start of the stream; ``conf`` is 1.0 for every word, which
means "not computed" (kaldi-active-grammar gives no per-word confidence). A final
without word times (its alignment failed, or the model has no alignment lexicon)
adds no entries; a reply none of whose finals has them carries no ``"result"``.

Errors (bad JSON, an unknown message, a bad config, a bad phrase list, no decoder)
get ``{"error": message, "status": code}`` and a close (1008 for the client's
mistakes, 1011 otherwise).

**Bounds.** A text frame is JSON of at most :data:`~shared.protocol.MAX_JSON_BYTES`
(64 KiB) nested at most :data:`~shared.protocol.MAX_JSON_DEPTH` deep, else status 5;
a ``phrase_list`` is checked as soon as its config arrives (count and length of the
phrases, :func:`~shared.protocol.parse_phrases`), else status 7. Until the first
audio frame the socket already counts as one of its API key's sessions
(``--key-max-sessions``, status 6), and configs, resets and silence may take no more
than ``--idle-timeout`` from connect (``--max-session-seconds`` if that is off), then
status 2.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Mapping
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from redis.exceptions import RedisError

from gateway.core import Outcome, SessionCore
from gateway.limits import for_request
from gateway.runner import EOS, AudioSource, SessionRunner, SessionSpec
from gateway.speech import audio_socket
from gateway.state import GATEWAY
from shared.config import GatewaySettings
from shared.protocol import (
    Aborted,
    BadRequest,
    JsonError,
    SessionError,
    Status,
    TimedOut,
    parse_json,
    parse_phrases,
    status_for,
    to_json,
)
from shared.wire import WORD_CONFIDENCE, FinalResult

log = logging.getLogger(__name__)

__all__ = ["VoskConfig", "VoskMessage", "VoskReplies", "handle_vosk", "parse_message"]

_CONFIG_KEYS = frozenset({"sample_rate", "words", "max_alternatives", "phrase_list"})
_MIN_RATE, _MAX_RATE = 1000, 384000


@dataclass(frozen=True)
class VoskConfig:
    sample_rate: int = 16000
    #: word entries (``"result"``) in finals; vosk-server's default is on too
    words: bool = True
    max_alternatives: int = 0
    #: the client's ``phrase_list`` as sent (validated by the runner), None: dictation
    phrase_list: object = None

    @property
    def content_type(self) -> str:
        return f"audio/x-raw, format=S16LE, channels=1, rate={self.sample_rate}"

    @classmethod
    def parse(cls, obj: object) -> VoskConfig:
        if not isinstance(obj, Mapping):
            raise BadRequest("config must be a JSON object")
        unknown = sorted(set(obj) - _CONFIG_KEYS)
        if unknown:  # vosk-server ignores what it does not know; so does this
            log.info("vosk config: ignoring field(s) %s", ", ".join(unknown))
        rate = obj.get("sample_rate", 16000)
        if (
            isinstance(rate, bool)
            or not isinstance(rate, int | float)
            or not math.isfinite(rate)
            or rate != int(rate)
            or not _MIN_RATE <= rate <= _MAX_RATE
        ):
            raise BadRequest(
                f"config sample_rate must be a whole number from {_MIN_RATE} to {_MAX_RATE}"
            )
        words = obj.get("words", True)
        if not isinstance(words, bool | int):
            raise BadRequest("config words must be a boolean")
        alternatives = obj.get("max_alternatives", 0)
        if isinstance(alternatives, bool) or not isinstance(alternatives, int):
            raise BadRequest("config max_alternatives must be an integer")
        if alternatives != 0:
            raise BadRequest(
                "max_alternatives > 0 is not supported: the decoder gives no n-best list"
            )
        phrase_list = obj.get("phrase_list")
        if phrase_list is not None:
            # its bounds now (status 7); the runner keeps it
            parse_phrases(phrase_list, lenient=True)
        return cls(int(rate), bool(words), 0, phrase_list)


@dataclass(frozen=True)
class VoskMessage:
    """A text frame of the vosk dialect: exactly one of its fields is set."""

    config: VoskConfig | None = None
    eof: bool = False
    reset: bool = False


def parse_message(text: str) -> VoskMessage:
    """``{"config": …}``, ``{"eof": 1}`` or ``{"reset": 1}``, with any spacing.

    Raises :class:`BadRequest` (or :class:`~shared.protocol.BadGrammar` for a bad
    phrase list); never anything else, whatever the text holds."""
    try:
        obj = parse_json(text)
    except JsonError as exc:
        raise BadRequest(f"Text message refused: {exc}") from exc
    if not isinstance(obj, dict) or len(obj) != 1:
        raise BadRequest(f"Unsupported text message: {text[:80]!r}")
    ((key, value),) = obj.items()
    if key == "config":
        return VoskMessage(config=VoskConfig.parse(value))
    if key in ("eof", "reset") and value in (1, True):
        return VoskMessage(eof=key == "eof", reset=key == "reset")
    raise BadRequest(f"Unsupported text message: {text[:80]!r}")


@dataclass
class VoskReplies:
    """What the client is told, from the session core's state (pure, no I/O)."""

    core: SessionCore
    #: the config's ``words``: finals carry their word entries as ``"result"``
    words: bool = True
    sent: int = 0  # finals already sent as {"text"}
    closed: bool = field(default=False)

    def _text(self, finals: list[FinalResult]) -> str:
        """One ``{"text"}`` reply for ``finals`` (vosk-server's ``Result()`` shape)."""
        reply: dict[str, Any] = {}
        if self.words:
            entries = [
                {"conf": WORD_CONFIDENCE, "end": w["end"], "start": w["start"], "word": w["word"]}
                for final in finals
                for w in final.words or ()
            ]
            if entries:
                reply["result"] = entries
        reply["text"] = " ".join(final.text for final in finals)
        return to_json(reply)

    def for_audio(self) -> str:
        """The reply to an audio frame: the oldest unsent final, else the partial."""
        if self.sent < len(self.core.finals):
            self.sent += 1
            return self._text(self.core.finals[self.sent - 1 : self.sent])
        partial = self.core.last_partial
        text = partial[1] if partial and partial[0] >= self.core.next_segment else ""
        return to_json({"partial": text})

    def rest(self) -> str:
        """Every unsent final in one ``{"text"}`` (the reply to eof and reset)."""
        finals = self.core.finals[self.sent :]
        self.sent = len(self.core.finals)
        return self._text(finals)

    def error(self) -> str | None:
        failure = self.core.failure
        if failure is None:
            return None
        return to_json({"error": failure.message, "status": int(failure.status)})


class _Sink:
    """Worker events need no reply of their own; the end of the session does."""

    replies: VoskReplies

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def deliver(self, outcome: Outcome) -> None:
        if not outcome.close or self.ws.closed:
            return
        error = self.replies.error()
        try:
            if error is not None:
                await _fail(self.ws, error, self.replies.core.failure.status)  # type: ignore[union-attr]
                return
            await self.ws.send_str(self.replies.rest())  # the reply to eof
            await self.ws.close()
        except ConnectionResetError:  # the client is gone: nobody left to tell
            log.debug("vosk client gone before the last reply")


async def _fail(ws: web.WebSocketResponse, reply: str, status: Status) -> None:
    client = status in (Status.NOT_ALLOWED, Status.BAD_GRAMMAR, Status.LANGUAGE_NOT_SUPPORTED)
    code = WSCloseCode.POLICY_VIOLATION if client else WSCloseCode.INTERNAL_ERROR
    if not ws.closed:
        await ws.send_str(reply)
        await ws.close(code=code)


async def handle_vosk(request: web.Request) -> web.WebSocketResponse:
    gateway = request.app[GATEWAY]
    settings = gateway.settings
    ws = audio_socket(settings)
    await ws.prepare(request)
    sid = uuid.uuid4().hex
    limits = for_request(gateway.redis, gateway.keys, settings.key_audio_period)
    try:
        async with AsyncExitStack() as stack:
            if limits is not None:
                # One of the key's sessions from connect: the runner takes the place
                # over with the same id (docs/security.md, "Bounds").
                await stack.enter_async_context(limits.holding(sid))
            config, first, eof = await _before_audio(ws, settings)
        if ws.closed or (first is None and not eof):
            return ws
        spec = SessionSpec(
            model=request.query.get("model", settings.model),
            content_type=config.content_type,
            transport="vosk",
            phrases=config.phrase_list,
            lenient_phrases=True,
        )
        sink = _Sink(ws)
        frames = _frames(ws, sink, first, settings.max_frame_bytes)
        runner = SessionRunner(gateway, spec, frames, sink, sid=sid, socket=ws)
        # before the runner reads the first frame
        sink.replies = VoskReplies(runner.core, words=config.words)
        await runner.run()
    except (SessionError, RedisError) as exc:  # before the runner: it reports its own
        # Only its text and status outlive this block: the exception's traceback holds
        # this frame, a cycle that kept the client's unread frames alive (see core.py).
        error = exc if isinstance(exc, SessionError) else Aborted(f"Redis unavailable: {exc}")
        message, status = str(error), status_for(error)
        del error
        log.info("vosk session %s refused: %s", sid[:8], message)
        await _fail(ws, to_json({"error": message, "status": int(status)}), status)
    finally:
        if limits is not None:
            with suppress(RedisError, OSError):
                await limits.release(sid)  # a no-op once the runner has released it
    return ws


def _setup_timeout(settings: GatewaySettings) -> float | None:
    """How long a client may take from connect to its first audio (``None``: no bound)."""
    for limit in (settings.idle_timeout, settings.max_session_seconds):
        if limit > 0:
            return float(limit)
    return None


async def _before_audio(
    ws: web.WebSocketResponse, settings: GatewaySettings
) -> tuple[VoskConfig, bytes | None, bool]:
    """Configs until the first audio frame (or eof): the config, that frame, and
    whether eof came first. Raises :class:`TimedOut` when it takes too long."""
    config = VoskConfig()
    limit = _setup_timeout(settings)
    try:
        async with asyncio.timeout(limit):
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    return config, msg.data, False
                if msg.type == WSMsgType.TEXT:
                    message = parse_message(msg.data)
                    if message.config is not None:
                        config = message.config
                        continue
                    if message.eof:
                        return config, None, True
                    await ws.send_str(to_json({"text": ""}))  # a reset before any audio
                elif msg.type == WSMsgType.ERROR:
                    break
    except TimeoutError:
        raise TimedOut(f"No audio received for {limit:g} s after connecting") from None
    return config, None, False


async def _frames(
    ws: web.WebSocketResponse, sink: _Sink, first: bytes | None, limit: int
) -> AudioSource:
    """Audio pieces and ``EOS`` for the runner; every frame answered as it is read."""
    replies = sink.replies
    if first is None:  # eof before any audio
        yield EOS
        return
    pending: bytes | None = first
    while True:
        if pending is not None:
            if len(pending) > limit:
                raise BadRequest(f"Frame of {len(pending)} bytes exceeds {limit}")
            await ws.send_str(replies.for_audio())
            yield pending
            pending = None
        msg = await ws.receive()
        if msg.type == WSMsgType.BINARY:
            pending = msg.data
        elif msg.type == WSMsgType.TEXT:
            message = parse_message(msg.data)
            if message.eof:
                yield EOS
            elif message.reset:
                await ws.send_str(replies.rest())
            else:
                raise BadRequest("config must come before the audio")
        elif msg.type == WSMsgType.ERROR:
            raise BadRequest(f"Websocket error: {ws.exception()}")
        else:  # closed by the client
            return
