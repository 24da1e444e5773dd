"""One recognition session, whatever the transport carries it.

A transport (the websocket in :mod:`gateway.speech`, HTTP in :mod:`gateway.http`)
hands :class:`SessionRunner` three things and does nothing else:

* a :class:`SessionSpec` — model, content type, the client's ids for the log;
* an :data:`AudioSource` — an async generator of audio pieces (``bytes``) and
  :data:`EOS`; ending without ``EOS`` means the client went away;
* a :class:`ResultSink` — where the pure core's :class:`~gateway.core.Outcome`
  goes (the websocket sends each message; HTTP keeps only the verdict).

The runner does the rest: admission, normalisation, the audio stream, and worker
events through :class:`~gateway.core.SessionCore`. Two tasks per session:
``_pump_audio`` reads the source, normalises and appends to the session's audio
stream; ``_pump_events`` turns worker events into client messages.

One piece from the source is one bounded step, however far it expands: its PCM comes
out of :class:`~gateway.audio.AudioInput` a piece at a time, and each group of chunks
waits for room in the backlog (``max_backlog_seconds``) and is charged to the key's
audio budget before it is written. Whatever ends the session early on the gateway's
side, the worker is told (``Abort``) so that its slot frees at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing, suppress
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from aiohttp import web
from redis.exceptions import RedisError

from gateway.admission import admit, choose_model
from gateway.appender import Command
from gateway.audio import AudioInput
from gateway.core import MIN_ACTIVE_AUDIO_S, IdleClock, Outcome, Phase, SessionCore
from gateway.hub import EventQueue
from gateway.limits import REFRESH_S, KeyLimits, for_request
from gateway.state import Gateway
from shared.keys import SESSION_TTL_S
from shared.logs import SessionLog
from shared.protocol import (
    Aborted,
    BadGrammar,
    BadRequest,
    FellBehind,
    LimitExceeded,
    NoDecoderAvailable,
    QueuePosition,
    SessionError,
    TimedOut,
    UnknownModel,
    parse_phrases,
)
from shared.tasks import stop_tasks
from shared.wire import (
    Abort,
    AudioChunk,
    EndOfStream,
    PartialResult,
    Progress,
    SessionRequest,
    parse_final_fields,
)

log = logging.getLogger(__name__)
#: Sessions refused or ended by the gateway, by reason (metrics, ``stats`` counters).
_REJECT_REASONS: dict[type[SessionError], str] = {
    NoDecoderAvailable: "no_decoder",
    BadRequest: "bad_input",
    UnknownModel: "unknown_model",
    BadGrammar: "bad_grammar",
    LimitExceeded: "key_limit",
    TimedOut: "timeout",
    FellBehind: "decoder_lag",
}
#: How often a session's watchdog checks its timeouts and its decoder's lag.
WATCH_INTERVAL_S = 0.5
#: Queue-position messages are sent on change, at most this often.
QUEUE_REPORT_INTERVAL_S = 1.0
#: An appending session renews its keys' TTL at most this often.
_TTL_RENEW_S = 60.0


class Mark(Enum):
    """Non-audio items of an :data:`AudioSource`."""

    EOS = "EOS"


EOS = Mark.EOS
AudioSource = AsyncGenerator[bytes | Mark, None]


class ResultSink(Protocol):
    async def deliver(self, outcome: Outcome) -> None:
        """Send ``outcome.messages`` (if the transport streams them), then close if told."""


@dataclass(frozen=True)
class SessionSpec:
    model: str
    content_type: str
    transport: str
    #: kaldi-gstreamer-server's ``user-id`` (websocket) or ``device-id`` (HTTP)
    user_id: str = ""
    content_id: str = ""
    #: the client's phrase list as it arrived (decoded JSON, ``None``: dictation); the
    #: runner validates it with :func:`shared.protocol.parse_phrases` (status 7)
    phrases: object = None
    #: vosk-server's treatment of the phrase list: empty phrases and words the model
    #: lacks are dropped, not refused (only a list with no usable phrase is status 7)
    lenient_phrases: bool = False


class SessionRunner:
    def __init__(
        self,
        gateway: Gateway,
        spec: SessionSpec,
        source: AudioSource,
        sink: ResultSink,
        *,
        sid: str | None = None,
        socket: web.WebSocketResponse | None = None,
    ) -> None:
        self.gw = gateway
        self.spec = spec
        self.source = source
        self.sink = sink
        self.core = SessionCore(sid or uuid.uuid4().hex)
        self.log = SessionLog(log, self.core.sid)
        self.keys = gateway.keys
        self.redis = gateway.redis
        self.audio: AudioInput | None = None
        #: a websocket the gateway's drain may close (see :meth:`Gateway.close_sessions`)
        self.socket = socket
        self._audio_at = 0.0  # when audio last went onto the stream (partial latency)
        self._eos_at = 0.0  # when EOS did (final latency)
        self._ttl_renewed = -_TTL_RENEW_S  # when our appends last renewed the keys' TTL
        # Backpressure and timeouts (see _watch): samples put on the stream, samples
        # the decoder reported taking, and how long the client has sent too little.
        self._rate = 16000
        self._appended = 0
        self._decoded = 0
        self._progressed = asyncio.Event()
        self._idle: IdleClock | None = None
        self._pending = b""  # normalised audio short of a chunk
        self.limits: KeyLimits | None = None

    @property
    def sid(self) -> str:
        return self.core.sid

    async def run(self) -> SessionCore:
        """Run the session to its end; the core then holds the finals and the verdict."""
        started = time.monotonic()
        outcome = "ok"
        with self.gw.track(self.sid, self.socket):
            try:
                await self._session_or_abort()
            except SessionError as exc:
                outcome = type(exc).__name__
                self.log.info("%s: %s", outcome, exc)
                reason = next(
                    (r for cls, r in _REJECT_REASONS.items() if isinstance(exc, cls)), None
                )
                if reason is not None:
                    self.gw.metrics.rejects_total.labels(reason).inc()
                    with suppress(RedisError, OSError):
                        await self.redis.hincrby(self.keys.stats, f"rejected:{reason}", 1)
                await self.sink.deliver(self.core.on_error(exc))
            finally:
                if self.audio is not None:
                    await self.audio.aclose()
            if self.core.failure is not None and outcome == "ok":
                outcome = f"status {int(self.core.failure.status)}"
            self.gw.metrics.sessions_total.labels(outcome).inc()
            kind = self.audio.kind if self.audio is not None else None
            self.log.info(
                "session ended (%s) after %.1f s; audio %s",
                outcome,
                time.monotonic() - started,
                kind or "none",
            )
        return self.core

    async def _session_or_abort(self) -> None:
        """Redis unreachable for longer than the client retries ends the session with a
        status message (2), not a dropped socket."""
        try:
            await self._session()
        except RedisError as exc:
            raise Aborted(f"Redis unavailable: {exc}") from exc

    async def _session(self) -> None:
        settings = self.gw.settings
        spec = self.spec
        model = await choose_model(
            self.redis, self.keys, spec.model, default=settings.model, allowed=settings.models
        )
        phrases = (
            ()
            if spec.phrases is None
            else parse_phrases(spec.phrases, lenient=spec.lenient_phrases)
        )
        # BadRequest on a malformed content type, before a slot is taken.
        self.audio = AudioInput(spec.content_type, model.sample_rate, label=self.sid[:8])
        self.log.info(
            "session started: %s model=%s content-type=%r user=%r content=%r",
            spec.transport,
            spec.model,
            spec.content_type,
            spec.user_id,
            spec.content_id,
        )
        self._rate = model.sample_rate
        events = await self.gw.hub.subscribe(self.sid)
        keepalive: asyncio.Task[None] | None = None
        try:
            limits = for_request(self.redis, self.keys, settings.key_audio_period)
            if limits is not None:
                await limits.acquire(self.sid)
                self.limits = limits
                keepalive = asyncio.create_task(self._keep_place(limits))
            queued = time.monotonic()
            claimed = await admit(
                self.redis,
                self.keys,
                SessionRequest(
                    sid=self.sid,
                    model=spec.model,
                    created=time.time(),
                    phrases=phrases,
                    skip_unknown_words=spec.lenient_phrases,
                ),
                events,
                sample_rate=model.sample_rate,
                wait=settings.admission_wait,
                claim_timeout=settings.claim_timeout,
                on_position=(
                    self._report_position
                    if settings.queue_messages and spec.transport == "websocket"
                    else None
                ),
                report_interval=QUEUE_REPORT_INTERVAL_S,
            )
            self.gw.metrics.queue_wait.observe(time.monotonic() - queued)
            self.log.info("claimed by %s", claimed.worker)
            self.core.on_event(claimed)
            pump_audio = asyncio.create_task(self._pump_audio(self.audio, model.sample_rate))
            pump_events = asyncio.create_task(self._pump_events(events))
            watch = asyncio.create_task(self._watch())
            try:
                running = {pump_audio, pump_events, watch}
                while True:
                    done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    if watch in done:  # a timeout or the decoder's lag: only ever raises
                        error = watch.exception()
                        assert isinstance(error, SessionError), error
                        await self._append(Abort(str(error)))
                        raise error
                    if pump_events in done:
                        # The session closed on the worker's side (done or failed);
                        # whatever the client still sends is not read.
                        pump_events.result()
                        break
                    # pump_audio ended: raises what ended the session early; False if
                    # the client went away; else wait for the last final.
                    if not pump_audio.result():
                        break
                    running.discard(pump_audio)
            finally:
                # What ended the session was raised above; the rest is cleanup.
                await stop_tasks(pump_audio, pump_events, watch)
        finally:
            await self.gw.hub.unsubscribe(self.sid)
            await stop_tasks(keepalive)
            await self._release_place()

    async def _append(self, *entries: AudioChunk | EndOfStream | Abort) -> None:
        commands: list[Command] = []
        audio_bytes = 0
        for entry in entries:
            commands.append(("xadd", (self.keys.audio(self.sid), entry.serialize())))
            if isinstance(entry, AudioChunk):
                audio_bytes += len(entry.pcm)
                self._audio_at = time.monotonic()
        if audio_bytes:
            commands.append(("hincrby", (self.keys.meta(self.sid), "audio_bytes", audio_bytes)))
        # A session may last hours: what we write keeps living (and a record that Redis
        # lost, recreated by the counter above, expires instead of lingering forever).
        now = time.monotonic()
        if now - self._ttl_renewed >= _TTL_RENEW_S:
            self._ttl_renewed = now
            for key in (self.keys.audio(self.sid), self.keys.meta(self.sid)):
                commands.append(("expire", (key, SESSION_TTL_S)))
        await self.gw.appender.run(commands)
        self._appended += audio_bytes // 2

    async def _abort(self, reason: str) -> None:
        """Tell the worker the session is over, so that its slot frees at once."""
        await self._append(Abort(reason))

    async def _pump_audio(self, audio: AudioInput, rate: int) -> bool:
        """Source pieces -> normalised chunks on the audio stream, until EOS or the end.

        Returns False when the client went away before ``EOS``.
        """
        chunk = max(2, int(self.gw.settings.chunk_seconds * rate) * 2)
        idle = self._idle = IdleClock(time.monotonic(), int(MIN_ACTIVE_AUDIO_S * rate))
        try:
            async with aclosing(self.source) as source:
                async for item in source:
                    idle.busy(time.monotonic())
                    if item is EOS:
                        self.core.on_eos()
                        self._eos_at = time.monotonic()
                        audio.end()
                        await self._convert(audio, chunk)
                        tail, self._pending = self._pending, b""
                        await self._write([tail] if tail else [], end=True)
                        self.log.info("EOS received")
                        continue
                    assert isinstance(item, bytes)
                    self.core.on_audio()
                    idle.heard(len(item), 0, time.monotonic())
                    audio.feed(item)
                    await self._convert(audio, chunk)
                    idle.ready(time.monotonic())
        except SessionError as exc:
            await self._abort(str(exc))
            raise
        except Exception:
            # Not the client's doing: the session ends all the same, and so must the
            # worker's side of it (the slot), before the error is reported.
            with suppress(RedisError, OSError):
                await self._abort("gateway error")
            raise
        if self.core.phase is Phase.STREAMING:
            # The client went away before EOS: the worker stops, nobody is told.
            self.log.info("client closed before EOS")
            await self._abort("client disconnected")
            return False
        return True

    async def _convert(self, audio: AudioInput, chunk: int) -> None:
        """Everything ``audio`` makes of its input so far onto the stream, a piece at a
        time; what is short of a whole chunk waits in ``_pending``."""
        while pcm := await audio.read():
            assert self._idle is not None
            self._idle.heard(0, len(pcm) // 2, time.monotonic())
            pending = self._pending + pcm
            cut = len(pending) - len(pending) % chunk
            self._pending = pending[cut:]
            if cut:
                await self._write([pending[i : i + chunk] for i in range(0, cut, chunk)])

    async def _write(self, chunks: list[bytes], *, end: bool = False) -> None:
        """Put ``chunks`` onto the stream (then ``EndOfStream`` if ``end``): each group
        only once the backlog has room for it, and charged to the key's audio budget
        before it is written."""
        while True:
            count = await self._room(chunks)
            group, chunks = chunks[:count], chunks[count:]
            allowed = await self._charge(group)
            entries: list[AudioChunk | EndOfStream] = [AudioChunk(c) for c in group[:allowed]]
            if end and not chunks and allowed == len(group):
                entries.append(EndOfStream())
            if entries:
                await self._append(*entries)
            if allowed < len(group):
                assert self.limits is not None
                raise self.limits.exceeded()
            if not chunks:
                return

    async def _charge(self, chunks: list[bytes]) -> int:
        """How many of ``chunks`` the key's audio budget allows (counted as granted)."""
        limits = self.limits
        seconds = sum(len(c) for c in chunks) / 2 / self._rate
        if limits is None or seconds == 0:
            return len(chunks)
        granted = await limits.charge(seconds)
        allowed, total = 0, 0.0
        for c in chunks:
            total += len(c) / 2 / self._rate
            if total > granted + 1e-6:
                break
            allowed += 1
        return allowed

    async def _pump_events(self, events: EventQueue) -> None:
        while True:
            event = await events.get()
            if isinstance(event, Progress):
                # A takeover replays the decoder epoch: its progress starts behind.
                self._decoded = max(self._decoded, event.samples)
                self._progressed.set()
                continue
            if isinstance(event, PartialResult) and self._audio_at:
                self.gw.metrics.partial_latency.observe(time.monotonic() - self._audio_at)
            outcome = self.core.on_event(event)
            if outcome.catch_up:
                await self._catch_up()
                outcome = self.core.after_catch_up(event)
            if outcome.close:
                # Free the key's place before the client hears the end: a client that
                # starts its next session at once must find it free.
                await self._release_place()
            await self.sink.deliver(outcome)
            if outcome.close and self._eos_at:
                self.gw.metrics.final_latency.observe(time.monotonic() - self._eos_at)
            if outcome.close:
                return

    async def _catch_up(self) -> None:
        """Deliver finals that reached the results stream but not us over pub/sub."""
        for _id, fields in await self.redis.xrange(self.keys.results(self.sid)):
            await self.sink.deliver(self.core.on_event(parse_final_fields(fields)))

    # --- backpressure, timeouts, limits, queue position ------------------------------

    async def _room(self, chunks: list[bytes]) -> int:
        """How many of ``chunks`` may go onto the stream now (at least one, if any).

        Holds the client back (its socket is not read) while ``max_backlog_seconds`` of
        its audio waits in Redis ahead of the decoder; then allows what fits, so the
        backlog never passes the bound by more than one chunk, whatever one piece of
        input expanded to."""
        limit = self.gw.settings.max_backlog_seconds * self._rate
        if limit <= 0 or not chunks:
            return len(chunks)
        while self._appended - self._decoded >= limit:
            self._progressed.clear()
            await self._progressed.wait()
        room = limit - (self._appended - self._decoded)
        count = 1
        samples = len(chunks[0]) // 2
        while count < len(chunks) and samples + len(chunks[count]) // 2 <= room:
            samples += len(chunks[count]) // 2
            count += 1
        return count

    async def _watch(self) -> None:
        """Raise :class:`TimedOut` or :class:`FellBehind` when the session must end.

        The decoder's lag is measured against a real-time reader of the same audio: it
        starts at the claim and reads one second of audio per second, never ahead of
        what the client has sent. A client uploading faster than real time therefore
        does not count as lag; a decoder slower than real time, or stopped, does.
        """
        settings = self.gw.settings
        started = last = time.monotonic()
        reference = 0.0  # samples the real-time reader has read
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            reference = min(float(self._appended), reference + (now - last) * self._rate)
            last = now
            if settings.max_session_seconds > 0 and now - started > settings.max_session_seconds:
                raise TimedOut(
                    f"Session exceeded the maximum duration of {settings.max_session_seconds:g} s"
                )
            idle = self._idle
            if (
                settings.idle_timeout > 0
                and idle is not None
                and self.core.phase is Phase.STREAMING
                and idle.idle(now) > settings.idle_timeout
            ):
                raise _idle_error(idle, settings.idle_timeout, self._rate)
            lag = (reference - self._decoded) / self._rate
            if settings.max_decoder_lag > 0 and lag > settings.max_decoder_lag:
                raise FellBehind(
                    f"Decoder fell {lag:.1f} s behind real time "
                    f"(limit {settings.max_decoder_lag:g} s): server overloaded"
                )

    async def _keep_place(self, limits: KeyLimits) -> None:
        """Refresh this session's place in its key's concurrency count while it lives."""
        while True:
            await asyncio.sleep(REFRESH_S)
            if self.limits is not limits:
                return  # released already
            try:
                await limits.refresh(self.sid)
            except (RedisError, OSError) as exc:
                self.log.warning("key limit refresh: %s", exc)

    async def _release_place(self) -> None:
        limits, self.limits = self.limits, None
        if limits is not None:
            with suppress(RedisError, OSError):
                await limits.release(self.sid)

    async def _report_position(self, position: int) -> None:
        # Only informative: a client gone meanwhile is noticed when its audio is read.
        with suppress(ConnectionError):
            await self.sink.deliver(Outcome([QueuePosition(self.sid, position).serialize()]))


def _idle_error(idle: IdleClock, timeout: float, rate: int) -> TimedOut:
    if idle.received == 0:
        return TimedOut(f"No data received for {timeout:g} s")
    return TimedOut(
        f"Too little audio for {timeout:g} s: {idle.samples / rate:.2f} s received, "
        f"at least {MIN_ACTIVE_AUDIO_S:g} s keeps a session open"
    )
