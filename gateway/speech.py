"""``/client/ws/speech``: one client session, kaldi-gstreamer-server dialect.

Two tasks per session: ``_pump_audio`` reads the client's frames, normalises them and
appends them to the session's audio stream; ``_pump_events`` turns worker events into
client messages. :class:`~gateway.session.ClientSession` decides what is sent and when
the socket closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import suppress

from aiohttp import WSMsgType, web

from gateway.admission import admit
from gateway.audio import AudioInput
from gateway.session import ClientSession, Outcome, Phase
from gateway.state import GATEWAY, Gateway
from shared import cluster
from shared.protocol import BadRequest, ClientText, NoDecoderAvailable, SessionError
from shared.wire import Abort, AudioChunk, EndOfStream, SessionRequest, parse_final_fields

log = logging.getLogger(__name__)


class SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: str, kwargs: dict) -> tuple[str, dict]:  # type: ignore[type-arg,override]
        return f"[{self.extra['sid']}] {msg}", kwargs  # type: ignore[index]


async def handle_speech(request: web.Request) -> web.WebSocketResponse:
    gateway = request.app[GATEWAY]
    # aiohttp refuses larger frames itself (close 1009); one byte more than our limit
    # lets us answer an oversized frame with a status message first.
    ws = web.WebSocketResponse(max_msg_size=gateway.settings.max_frame_bytes + 1, autoping=True)
    await ws.prepare(request)
    sid = uuid.uuid4().hex
    slog = SessionLog(log, {"sid": sid})
    core = ClientSession(sid)
    started = time.monotonic()
    outcome = "ok"
    with gateway.track(sid, ws):
        try:
            await Session(gateway, ws, core, request, slog).run()
        except SessionError as exc:
            outcome = type(exc).__name__
            await _deliver(ws, core.on_error(exc))
        slog.info("session ended (%s) after %.1f s", outcome, time.monotonic() - started)
    return ws


async def _deliver(ws: web.WebSocketResponse, outcome: Outcome) -> None:
    for message in outcome.messages:
        if not ws.closed:
            await ws.send_str(message)
    if outcome.close and not ws.closed:
        await ws.close()


class Session:
    def __init__(
        self,
        gateway: Gateway,
        ws: web.WebSocketResponse,
        core: ClientSession,
        request: web.Request,
        slog: SessionLog,
    ) -> None:
        self.gw = gateway
        self.ws = ws
        self.core = core
        self.http = request
        self.log = slog
        self.keys = gateway.keys
        self.redis = gateway.redis

    async def run(self) -> None:
        settings = self.gw.settings
        model_id = self.http.query.get("model", settings.model)
        caps = self.http.query.get("content-type", "")
        model = await cluster.model(self.redis, self.keys, model_id)
        if model is None:
            await self.redis.hincrby(self.keys.stats, "rejected:no_decoder", 1)
            raise NoDecoderAvailable()
        audio = AudioInput(caps, model.sample_rate)  # BadRequest on malformed caps
        self.log.info("session started: model=%s content-type=%r", model_id, caps)
        sid = self.core.sid
        events = await self.gw.hub.subscribe(sid)
        try:
            claimed = await admit(
                self.redis,
                self.keys,
                SessionRequest(sid=sid, model=model_id, created=time.time()),
                events,
                sample_rate=model.sample_rate,
                wait=settings.admission_wait,
                claim_timeout=settings.claim_timeout,
            )
            self.log.info("claimed by %s", claimed.worker)
            self.core.on_event(claimed)
            pump_events = asyncio.create_task(self._pump_events(events))
            try:
                if await self._pump_audio(audio, model.sample_rate):
                    await pump_events
            finally:
                pump_events.cancel()
                with suppress(asyncio.CancelledError):
                    await pump_events
        finally:
            await self.gw.hub.unsubscribe(sid)

    async def _append(self, *entries: AudioChunk | EndOfStream | Abort) -> None:
        pipe = self.redis.pipeline(transaction=False)
        audio_bytes = 0
        for entry in entries:
            pipe.xadd(self.keys.audio(self.core.sid), entry.serialize())
            if isinstance(entry, AudioChunk):
                audio_bytes += len(entry.pcm)
        if audio_bytes:
            pipe.hincrby(self.keys.meta(self.core.sid), "audio_bytes", audio_bytes)
        await pipe.execute()

    async def _pump_audio(self, audio: AudioInput, rate: int) -> bool:
        """Client frames -> normalised chunks on the audio stream, until EOS or close.

        Returns False when the client went away before ``EOS``.
        """
        chunk = max(2, int(self.gw.settings.chunk_seconds * rate) * 2)
        limit = self.gw.settings.max_frame_bytes
        pending = b""
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.BINARY:
                    self.core.on_audio()
                    if len(msg.data) > limit:
                        raise BadRequest(f"Frame of {len(msg.data)} bytes exceeds {limit}")
                    pending += audio.push(msg.data)
                    if len(pending) >= chunk:
                        cut = len(pending) - len(pending) % chunk
                        pieces = [pending[i : i + chunk] for i in range(0, cut, chunk)]
                        pending = pending[cut:]
                        await self._append(*(AudioChunk(p) for p in pieces))
                elif msg.type == WSMsgType.TEXT:
                    if ClientText.parse(msg.data).eos:
                        self.core.on_eos()
                        pending += audio.flush()
                        tail = [AudioChunk(pending)] if pending else []
                        pending = b""
                        await self._append(*tail, EndOfStream())
                        self.log.info("EOS received")
                elif msg.type == WSMsgType.ERROR:
                    raise BadRequest(f"Websocket error: {self.ws.exception()}")
        except SessionError as exc:
            await self._append(Abort(str(exc)))
            raise
        if self.core.phase is Phase.STREAMING:
            # The client went away before EOS: the worker stops, nobody is told.
            self.log.info("client closed before EOS")
            await self._append(Abort("client disconnected"))
            return False
        return True

    async def _pump_events(self, events: asyncio.Queue) -> None:  # type: ignore[type-arg]
        while True:
            event = await events.get()
            outcome = self.core.on_event(event)
            if outcome.catch_up:
                await self._catch_up()
                outcome = self.core.on_event(event)
            await _deliver(self.ws, outcome)
            if outcome.close:
                return

    async def _catch_up(self) -> None:
        """Deliver finals that reached the results stream but not us over pub/sub."""
        for _id, fields in await self.redis.xrange(self.keys.results(self.core.sid)):
            await _deliver(self.ws, self.core.on_event(parse_final_fields(fields)))
