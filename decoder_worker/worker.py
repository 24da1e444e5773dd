"""The decoder worker: claims sessions while it has a free slot and decodes them.

Where a session is claimed: :meth:`Worker._claim_loop` reads the model's sessions
stream as consumer group ``decoders`` only after a slot is free, then wins the session
with an atomic ``queued -> decoding`` step. :meth:`Worker._serve` moves audio from
the session's stream into the slot's decoder process and publishes what comes back.

Shutdown: stop claiming -> let running sessions finish (bounded by ``drain``) -> cancel
-> stop the decoder processes -> remove the heartbeat.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time
from contextlib import suppress

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from decoder_worker.recognizer import Final, Partial
from decoder_worker.slots import DecoderPool, Slot, SlotDied
from shared import metrics, sessions
from shared.config import WorkerSettings
from shared.keys import GROUP, HEARTBEAT_INTERVAL_S, WORKER_TTL_S, Keys
from shared.metrics import WorkerMetrics
from shared.protocol import Status
from shared.wire import (
    Abort,
    AudioChunk,
    Claimed,
    Done,
    EndOfStream,
    Event,
    Failed,
    FinalResult,
    PartialResult,
    SessionRequest,
    final_fields,
    parse_audio_entry,
    serialize_event,
)

log = logging.getLogger(__name__)
VERSION = "0.1.0"
#: A session whose audio stream stays silent this long (its gateway vanished) fails.
AUDIO_TIMEOUT_S = 60.0
_BLOCK_MS = 1000


class SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: str, kwargs: dict) -> tuple[str, dict]:  # type: ignore[type-arg,override]
        return f"[{self.extra['sid']}] {msg}", kwargs  # type: ignore[index]


class Worker:
    def __init__(self, settings: WorkerSettings, pool: DecoderPool, sample_rate: int) -> None:
        self.settings = settings
        self.pool = pool
        self.sample_rate = sample_rate
        self.keys = Keys(settings.prefix)
        self.id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.redis: Redis = Redis.from_url(settings.redis_url)
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy = 0
        self.draining = False
        self.metrics = WorkerMetrics()
        self.metrics.slots_total.set(pool.size)
        self._beat_now = asyncio.Event()
        self.stream = self.keys.sessions(settings.model_id)

    # --- lifecycle -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        metrics_site = await self._serve_metrics()
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        await self._heartbeat_once()
        heartbeat = asyncio.create_task(self._heartbeat(), name="heartbeat")
        claimer = asyncio.create_task(self._claim_loop(), name="claim")
        log.info(
            "worker %s serving model %s with %d slots",
            self.id,
            self.settings.model_id,
            self.pool.size,
        )
        try:
            await stop.wait()
        finally:
            # Stop claiming and advertise no free slot, so gateways send sessions elsewhere;
            # running sessions get the drain timeout to finish.
            log.info("worker %s stopping: %d sessions running", self.id, len(self._tasks))
            self.draining = True
            claimer.cancel()
            with suppress(asyncio.CancelledError):
                await claimer
            with suppress(Exception):
                await self._heartbeat_once()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=self.settings.drain_timeout)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            heartbeat.cancel()
            with suppress(asyncio.CancelledError):
                await heartbeat
            await self.pool.close()
            with suppress(Exception):
                await self.redis.delete(self.keys.worker(self.id))
                await self.redis.zrem(self.keys.workers, self.id)
            await self.redis.aclose()
            if metrics_site is not None:
                await metrics_site.cleanup()

    async def _serve_metrics(self) -> web.AppRunner | None:
        """``/metrics`` for Prometheus and ``/healthz`` (the event loop answers)."""
        if not self.settings.metrics_port:
            return None

        async def healthz(request: web.Request) -> web.Response:
            return web.json_response({"worker": self.id, "slots_free": self.slots_free})

        app = web.Application()
        app.router.add_get("/metrics", metrics.handler(self.metrics.registry))
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", self.settings.metrics_port).start()
        return runner

    @property
    def slots_free(self) -> int:
        """Slots not decoding a session (the claim loop's waiting slot counts as free)."""
        return 0 if self.draining else self.pool.size - self._busy

    async def _heartbeat_once(self) -> None:
        now = time.time()
        self.metrics.slots_free.set(self.slots_free)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(
            self.keys.worker(self.id),
            mapping={
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "slots_total": self.pool.size,
                "slots_free": self.slots_free,
                "models": self.settings.model_id,
                "version": VERSION,
                "heartbeat": repr(now),
            },
        )
        pipe.expire(self.keys.worker(self.id), WORKER_TTL_S)
        pipe.zadd(self.keys.workers, {self.id: now})
        pipe.hset(
            self.keys.models, self.settings.model_id, json.dumps({"sample_rate": self.sample_rate})
        )
        await pipe.execute()

    async def _heartbeat(self) -> None:
        """Refresh the heartbeat periodically, and at once when the free slots change."""
        while True:
            with suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT_INTERVAL_S):
                    await self._beat_now.wait()
            self._beat_now.clear()
            try:
                await self._heartbeat_once()
            except (OSError, ConnectionError) as exc:
                log.warning("heartbeat failed: %s", exc)

    # --- claiming --------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while True:
            await self.pool.reserve()
            try:
                entry_id, request = await self._next_request()
                claimed = await sessions.claim(self.redis, self.keys, request.sid, self.id)
                if not claimed:
                    # The gateway gave up on it (cancelled) before we got there.
                    await self.redis.xack(self.stream, GROUP, entry_id)
                    self.pool.unreserve()
                    continue
                slot = await self.pool.spawn()
            except BaseException:
                self.pool.unreserve()
                raise
            self._busy += 1
            self._beat_now.set()
            task = asyncio.create_task(self._serve(request, entry_id, slot), name=request.sid)
            self._tasks.add(task)
            task.add_done_callback(self._session_done)

    def _session_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session task %s failed", task.get_name(), exc_info=task.exception())

    async def _next_request(self) -> tuple[bytes, SessionRequest]:
        while True:
            reply = await self.redis.xreadgroup(
                GROUP, self.id, {self.stream: ">"}, count=1, block=_BLOCK_MS
            )
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    return entry_id, SessionRequest.parse(fields)

    # --- one session -----------------------------------------------------------------

    async def _publish(self, sid: str, event: Event) -> None:
        await self.redis.publish(self.keys.events(sid), serialize_event(event))

    async def _serve(self, request: SessionRequest, entry_id: bytes, slot: Slot) -> None:
        sid = request.sid
        slog = SessionLog(log, {"sid": sid})
        slog.info("claimed (decoder pid %d)", slot.pid)
        feeder: asyncio.Task[str] | None = None
        last: Event
        seconds = cpu = 0.0
        try:
            await self._publish(sid, Claimed(worker=self.id))
            await slot.send("start", 0, 0, self.settings.partial_interval)
            feeder = asyncio.create_task(self._feed(sid, slot))
            segments, samples = await self._collect(sid, slot)
            ending = await feeder
            seconds = samples / self.sample_rate
            last = (
                Done(segments=segments, total=seconds)
                if ending == "eos"
                else Failed(int(Status.ABORTED), f"Session ended: {ending}")
            )
        except SlotDied as exc:
            slog.error("decoder process died: %s", exc)
            self.metrics.decoder_restarts_total.inc()
            last = Failed(int(Status.ABORTED), "Decoder process failed")
        except _SessionFailed as exc:
            slog.warning("session failed: %s", exc)
            last = Failed(int(exc.status), str(exc))
        finally:
            if feeder is not None and not feeder.done():
                feeder.cancel()
                with suppress(asyncio.CancelledError, SlotDied):
                    await feeder
            cpu = await self.pool.retire(slot)
            self._busy -= 1
        # Free the slot in Redis before the client hears the end: a client that
        # reconnects at once must find the capacity it just released.
        state = sessions.State.DONE if isinstance(last, Done) else sessions.State.FAILED
        self.metrics.sessions_total.labels(state.value).inc()
        if seconds > 0:
            self.metrics.decode_rtf.observe(cpu / seconds)
        slog.info(
            "session %s: %.1f s audio, decoder CPU %.2f s (real-time factor %.2f)",
            state.value,
            seconds,
            cpu,
            cpu / seconds if seconds else 0.0,
        )
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.meta(sid), "decoder_cpu", round(cpu, 3))
        pipe.xack(self.stream, GROUP, entry_id)
        pipe.hincrby(self.keys.stats, "requests_processed", 1)
        await pipe.execute()
        await sessions.retire(self.redis, self.keys, sid, state)
        await self._heartbeat_once()
        await self._publish(sid, last)

    async def _feed(self, sid: str, slot: Slot) -> str:
        """Audio stream -> decoder process. Returns how the stream ended."""
        last = "0-0"
        while True:
            reply = await self.redis.xread(
                {self.keys.audio(sid): last}, count=64, block=int(AUDIO_TIMEOUT_S * 1000)
            )
            if not reply:
                await slot.send("abort")
                return "timeout"
            for _stream, entries in reply:
                for entry_id, fields in entries:
                    last = entry_id
                    entry = parse_audio_entry(fields)
                    if isinstance(entry, AudioChunk):
                        await slot.send("audio", entry.pcm)
                    elif isinstance(entry, EndOfStream):
                        await slot.send("end")
                        return "eos"
                    elif isinstance(entry, Abort):
                        await slot.send("abort")
                        return f"aborted: {entry.reason}"

    async def _collect(self, sid: str, slot: Slot) -> tuple[int, int]:
        """Decoder process -> pub/sub and the results stream, until the session ends."""
        segments = 0
        while True:
            msg = await slot.recv()
            kind = msg[0]
            if kind == "events":
                for event in msg[1]:
                    if isinstance(event, Partial):
                        await self._publish(sid, PartialResult(event.segment, event.text))
                    elif isinstance(event, Final):
                        final = FinalResult(
                            segment=event.segment,
                            text=event.text,
                            likelihood=event.likelihood,
                            start=event.start,
                            length=event.length,
                            total=event.total,
                        )
                        pipe = self.redis.pipeline(transaction=False)
                        pipe.xadd(self.keys.results(sid), final_fields(final))
                        pipe.hset(self.keys.meta(sid), "next_segment", final.segment + 1)
                        pipe.publish(self.keys.events(sid), serialize_event(final))
                        await pipe.execute()
                        segments += 1
            elif kind == "ended":
                return segments, int(msg[1])
            elif kind == "error":
                raise _SessionFailed(Status.ABORTED, f"Decoding failed: {msg[1]}")


class _SessionFailed(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


async def run(settings: WorkerSettings) -> None:
    """The ``ksc worker`` process: prepare and load the model, then serve until SIGTERM."""
    from pathlib import Path

    from decoder_worker.engine import KagEngine
    from decoder_worker.model import load_prepared, prepare_model

    model = load_prepared(prepare_model(settings.model, cache_dir=Path(settings.cache)))
    started = time.monotonic()
    engine = KagEngine.load(model)
    log.info("model %s loaded in %.1f s", model.path, time.monotonic() - started)
    pool = DecoderPool(engine, model.endpoint, settings.slots)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Worker(settings, pool, model.sample_rate).run(stop)
