"""One claimed session on a worker: audio in, results out, replay points saved.

:class:`SessionRun` moves audio from the session's stream into its decoder process and
publishes what comes back. With every final it saves, atomically with the final
itself, the :class:`~shared.sessions.ReplayPoint` — the start of the open segment —
and trims the audio stream up to it. Whoever resumes the session (another worker after
this one died, or this one after its decoder process died) restarts there: finals keep
their numbers, nothing is lost or sent twice, and because every utterance decodes in a
fresh fork of the same engine the replayed segment comes out exactly as it would have.

Redis faults: the client retries a failed command for about ten seconds
(:mod:`shared.redis_client`), which covers a restart or a quick Sentinel failover
without the session noticing. A longer outage gives the session up without acking
it: its decoder stops, its lease is released if Redis answers, and once Redis is back
a claim loop (this worker's or another's) resumes it from its replay point. A session
whose record is gone (Redis restarted without its data) ends with status 2.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis import exceptions as rx

from decoder_worker.grammar import GrammarError
from decoder_worker.out_dir import SessionAudio
from decoder_worker.recognizer import Final, Partial
from decoder_worker.slots import Slot, SlotDied
from shared import sessions
from shared.keys import GROUP
from shared.protocol import Status
from shared.sessions import Claim, ReplayPoint
from shared.tasks import stop_tasks
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
    Progress,
    SessionRequest,
    final_fields,
    parse_audio_entry,
    serialize_event,
)

if TYPE_CHECKING:
    from decoder_worker.worker import Worker

log = logging.getLogger(__name__)
#: A session whose audio stream stays silent this long (its gateway vanished) ends.
AUDIO_TIMEOUT_S = 60.0
#: Without finals, the replay point is saved (and the audio trimmed) once it has moved
#: this many seconds, so long silences do not pile up in Redis.
_TRIM_AFTER_S = 5.0
#: The gateway hears how much audio went to the decoder every this many seconds of it.
PROGRESS_EVERY_S = 1.0
#: Decoder processes a session may lose before it fails instead of resuming again.
MAX_RESTARTS = 2
#: Idle time given to a released session's entry, so other workers claim it at once.
_RELEASED_IDLE_MS = 24 * 3600 * 1000
#: How long releasing a session may take when Redis is failing anyway.
_RELEASE_TIMEOUT_S = 2.0


class SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: str, kwargs: Any) -> tuple[str, Any]:
        return f"[{self.extra['sid']}] {msg}", kwargs  # type: ignore[index]


class LeaseLost(Exception):
    """Another worker took the session over: stop without a word to anyone."""


class SessionFailed(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class _Fed:
    """An audio entry handed to the decoder: its id and its first sample's index."""

    entry_id: str
    start: int


class SessionRun:
    def __init__(
        self, worker: Worker, request: SessionRequest, entry_id: bytes, claim: Claim, slot: Slot
    ) -> None:
        self.w = worker
        self.sid = request.sid
        self.phrases = request.phrases
        self.entry_id = entry_id
        self.claim = claim
        self.slot = slot
        self.lost = asyncio.Event()  # set by the worker's lease renewal
        self.log = SessionLog(log, {"sid": self.sid})
        self.keys = worker.keys
        self.redis = worker.redis
        #: the ``out_dir`` copy of the received audio, opened when decoding starts
        self.saved: SessionAudio | None = None

    async def _publish(self, event: Event) -> None:
        await self.redis.publish(self.keys.events(self.sid), serialize_event(event))

    async def _replay_point(self) -> ReplayPoint:
        return ReplayPoint.read(await self.redis.hgetall(self.keys.meta(self.sid)))

    # --- the whole session -----------------------------------------------------------

    async def run(self) -> None:
        point = ReplayPoint() if self.claim is Claim.NEW else await self._replay_point()
        if self.claim is Claim.RESUME:
            self.w.metrics.sessions_reclaimed_total.inc()
            self.log.info(
                "taken over: resuming at segment %d, sample %d", point.segment, point.sample
            )
        else:
            self.log.info("claimed (decoder pid %d)", self.slot.pid)
        cpu = seconds = 0.0
        last: Event
        restarts = 0
        if self.w.settings.out_dir:
            self.saved = SessionAudio(
                self.w.settings.out_dir, self.sid, self.w.sample_rate, point.sample
            )
        try:
            while True:
                try:
                    last, seconds = await self._decode(point)
                    break
                except SlotDied as exc:
                    self.w.metrics.decoder_restarts_total.inc()
                    restarts += 1
                    cpu += await self.w.pool.reap(self.slot)
                    if restarts > MAX_RESTARTS:
                        self.log.error("decoder process died %d times: %s", restarts, exc)
                        last = Failed(int(Status.ABORTED), "Decoder process failed")
                        break
                    self.log.warning("decoder process died (%s); resuming", exc)
                    point = await self._replay_point()
                    self.slot = await self.w.pool.spawn()
                except SessionFailed as exc:
                    self.log.warning("session failed: %s", exc)
                    last = Failed(int(exc.status), str(exc))
                    break
        except LeaseLost:
            if not await self._record_lost():
                self.log.warning("lease lost: another worker carries on with this session")
                return
            self.log.warning("session record gone: Redis lost its data")
            last = Failed(int(Status.ABORTED), sessions.DATA_LOST)
        except (rx.ConnectionError, rx.TimeoutError) as exc:
            # The client's own retries ran out: Redis has been away for a while. Stop
            # decoding without acking; once Redis is back the session resumes from its
            # replay point (here or on another worker).
            self.log.warning("Redis unreachable (%s): giving the session up for a resume", exc)
            with suppress(Exception):  # includes asyncio's timeout
                async with asyncio.timeout(_RELEASE_TIMEOUT_S):
                    await self._release()
            return
        except asyncio.CancelledError:
            # Drain ran out: hand the session to another worker right away.
            with suppress(Exception):
                await self._release()
            self.log.info("released to another worker")
            raise
        finally:
            if self.saved is not None:
                self.saved.close()
            cpu += await self.w.pool.retire(self.slot)
            self.w.session_finished()
        await self._finish(last, seconds, cpu)

    async def _release(self) -> None:
        """Give the lease up and make the entry claimable by any worker at once."""
        await sessions.renew(self.redis, self.keys, self.sid, self.w.id, lease=0)
        await self.redis.xclaim(
            self.w.stream,
            GROUP,
            self.w.id,
            0,
            [self.entry_id],
            idle=_RELEASED_IDLE_MS,
            justid=True,
        )

    async def _record_lost(self) -> bool:
        """Our lease renewal failed: because the record is gone, not to another owner?"""
        try:
            return not await self.redis.hget(self.keys.meta(self.sid), "state")
        except (rx.ConnectionError, rx.TimeoutError):
            return False

    async def _finish(self, last: Event, seconds: float, cpu: float) -> None:
        """Free the slot in Redis before the client hears the end: a client that
        reconnects at once must find the capacity it just released."""
        state = sessions.State.DONE if isinstance(last, Done) else sessions.State.FAILED
        self.w.metrics.sessions_total.labels(state.value).inc()
        if seconds > 0:
            self.w.metrics.decode_rtf.observe(cpu / seconds)
        self.log.info(
            "session %s: %.1f s audio, decoder CPU %.2f s (real-time factor %.2f)",
            state.value,
            seconds,
            cpu,
            cpu / seconds if seconds else 0.0,
        )
        if not await sessions.finish(self.redis, self.keys, self.sid, self.w.id, state, cpu):
            self.log.warning("session taken over before it ended here: not announcing")
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(self.w.stream, GROUP, self.entry_id)
        pipe.hincrby(self.keys.stats, "requests_processed", 1)
        # An XACK after Redis lost the consumer group (NOGROUP) must not keep the
        # client from hearing how the session ended.
        for reply in await pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception):
                self.log.warning("end bookkeeping: %s", reply)
        await self.w.heartbeat_once()
        await self._publish(last)

    # --- one pass of decoding, from a replay point -----------------------------------

    async def _decode(self, point: ReplayPoint) -> tuple[Event, float]:
        await self._publish(Claimed(worker=self.w.id))
        if self.phrases:
            # Compiled (or found in the cache) by the worker, added by the session's
            # decoder process to its own copy of the engine: see decoder_worker.grammar.
            try:
                grammar = await self.w.grammars.compile(self.phrases)
            except GrammarError as exc:
                raise SessionFailed(Status.BAD_GRAMMAR, str(exc)) from exc
            await self.slot.send("grammar", grammar)
        await self.slot.send("start", point.segment, point.sample, self.w.settings.partial_interval)
        fed: deque[_Fed] = deque()
        feeder = asyncio.create_task(self._feed(point, fed))
        collector = asyncio.create_task(self._collect(point, fed))
        lost = asyncio.create_task(self.lost.wait())
        try:
            pending = {feeder, collector, lost}
            while collector in pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if lost in done:
                    raise LeaseLost
                if feeder in done and feeder.exception() is not None:
                    raise feeder.exception()  # type: ignore[misc]
            next_segment, samples = collector.result()
            ending = await feeder
        finally:
            await stop_tasks(feeder, collector, lost)
        seconds = samples / self.w.sample_rate
        if ending == "eos":
            return Done(segments=next_segment, total=seconds), seconds
        return Failed(int(Status.ABORTED), f"Session ended: {ending}"), seconds

    async def _feed(self, point: ReplayPoint, fed: deque[_Fed]) -> str:
        """Audio stream -> decoder process, from the replay point. Returns how it ended."""
        last: str = point.after
        skip = (point.sample - point.base) * 2  # bytes before the restart sample
        position = reported = point.base
        progress_every = int(PROGRESS_EVERY_S * self.w.sample_rate)
        while True:
            reply = await self.redis.xread(
                {self.keys.audio(self.sid): last}, count=64, block=int(AUDIO_TIMEOUT_S * 1000)
            )
            if not reply:
                await self.slot.send("abort")
                return "audio timeout"
            for _stream, entries in reply:
                for raw_id, fields in entries:
                    last = raw_id.decode()
                    entry = parse_audio_entry(fields)
                    if isinstance(entry, AudioChunk):
                        pcm = entry.pcm
                        if self.saved is not None:
                            self.saved.write(position, pcm)
                        fed.append(_Fed(last, position))
                        position += len(pcm) // 2
                        if skip:
                            cut = min(skip, len(pcm))
                            pcm, skip = pcm[cut:], skip - cut
                        if pcm:
                            await self.slot.send("audio", pcm)
                        if position - reported >= progress_every:
                            # Handed over: the pipes to the decoder hold only a few
                            # seconds, so this tracks decoding (gateway backpressure).
                            await self._publish(Progress(position))
                            reported = position
                    elif isinstance(entry, EndOfStream):
                        await self.slot.send("end")
                        return "eos"
                    elif isinstance(entry, Abort):
                        await self.slot.send("abort")
                        return f"aborted: {entry.reason}"

    async def _collect(self, point: ReplayPoint, fed: deque[_Fed]) -> tuple[int, int]:
        """Decoder process -> pub/sub and the results stream, until the session ends."""
        while True:
            msg = await self.slot.recv()
            if msg[0] == "events":
                finals = []
                for event in msg[1]:
                    if isinstance(event, Partial):
                        text = await self.w.post.partial(event.text)
                        if text is not None:  # None: a busy post-processor skips it
                            await self._publish(PartialResult(event.segment, text))
                    elif isinstance(event, Final):
                        final = FinalResult(
                            segment=event.segment,
                            text=event.text,
                            likelihood=event.likelihood,
                            start=event.start,
                            length=event.length,
                            total=event.total,
                        )
                        finals.append(await self.w.post.final(final, self.sid))
                moved = (msg[2] - point.sample) / self.w.sample_rate
                if finals or moved >= _TRIM_AFTER_S:
                    point = await self._save(finals, point, fed, msg[2])
            elif msg[0] == "ended":
                return point.segment, int(msg[1])
            elif msg[0] == "no speech":
                limit = self.w.pool.silence_timeout
                raise SessionFailed(
                    Status.NO_SPEECH, f"No speech: {limit:g} s of audio without speech"
                )
            elif msg[0] == "error":
                raise SessionFailed(Status.ABORTED, f"Decoding failed: {msg[1]}")

    async def _save(
        self, finals: list[FinalResult], old: ReplayPoint, fed: deque[_Fed], sample: int
    ) -> ReplayPoint:
        """Store the finals with the new replay point and trim the audio before it, in
        one fenced script (only while we own the session), then publish them."""
        while len(fed) > 1 and fed[1].start <= sample:
            after = fed.popleft().entry_id
            old = ReplayPoint(old.segment, after, fed[0].start, old.sample)
        segment = finals[-1].segment + 1 if finals else old.segment
        point = ReplayPoint(segment, old.after, old.base, max(sample, old.base))
        saved = await sessions.save_finals(
            self.redis,
            self.keys,
            self.sid,
            self.w.id,
            [final_fields(final)["event"] for final in finals],
            point,
            fed[0].entry_id if fed else "",
        )
        if not saved:
            raise LeaseLost
        for final in finals:
            await self._publish(final)
        return point
