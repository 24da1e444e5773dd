"""One claimed session on a worker: audio in, results out, replay points saved.

:class:`ClaimedSession` moves audio from the session's stream into its decoder process
and publishes what comes back. With every final it saves, atomically with the final
itself, the :class:`~decoder_worker.replay.ReplayPoint` — the start of the decoder's
current epoch — and trims the audio stream up to it (the arithmetic is
:mod:`decoder_worker.replay`'s). Whoever resumes the session (another worker after this
one died, or this one after its decoder process died) restarts there: finals keep their
numbers, the epoch's finals already delivered are decoded again and dropped, nothing is
lost or sent twice, and because every epoch decodes in a fresh fork of the same engine
the replayed segments come out exactly as they would have.

Redis faults: the client retries a failed command for about ten seconds
(:mod:`shared.redis_client`), which covers a restart or a quick Sentinel failover
without the session noticing. A longer outage gives the session up without acking
it: its decoder stops, its lease is released if Redis answers, and once Redis is back
a claim loop (this worker's or another's) resumes it from its replay point. A session
whose record is gone (Redis restarted without its data) ends with status 2.

What a session uses of the worker that claimed it is :class:`WorkerServices`, and
nothing more: this module does not know :mod:`decoder_worker.worker`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import assert_never

from redis import exceptions as rx
from redis.asyncio import Redis

from decoder_worker import pipes
from decoder_worker.grammar import GrammarCompiler, GrammarError
from decoder_worker.out_dir import SessionAudio
from decoder_worker.postprocess import PostProcessors
from decoder_worker.recognizer import Final, Partial
from decoder_worker.replay import AudioLedger, ReplayPoint
from decoder_worker.slots import DecoderPool, Slot, SlotDied
from shared import records
from shared.keys import GROUP, Keys
from shared.logs import SessionLog
from shared.metrics import WorkerMetrics
from shared.protocol import Status
from shared.records import Claim
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
    word_times,
)

log = logging.getLogger(__name__)
#: A session whose audio stream stays silent this long (its gateway vanished) ends.
AUDIO_TIMEOUT_S = 60.0
#: The gateway hears how much audio went to the decoder every this many seconds of it.
PROGRESS_EVERY_S = 1.0
#: Decoder processes a session may lose before it fails instead of resuming again.
MAX_RESTARTS = 2
#: Idle time given to a released session's entry, so other workers claim it at once.
_RELEASED_IDLE_MS = 24 * 3600 * 1000
#: How long releasing a session may take when Redis is failing anyway.
_RELEASE_TIMEOUT_S = 2.0


class LeaseLost(Exception):
    """Another worker took the session over: stop without a word to anyone."""


class SessionFailed(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class WorkerServices:
    """What a claimed session uses of the worker that claimed it (built once by the
    worker, shared by all its sessions)."""

    redis: Redis
    keys: Keys
    #: the worker's consumer name in the sessions stream's group, and owner name
    id: str
    #: the sessions stream (of the worker's model) the session's entry is pending in
    stream: str
    sample_rate: int
    #: seconds of audio between two partials
    partial_interval: float
    #: where each session's received audio is saved ("": nowhere)
    out_dir: str
    metrics: WorkerMetrics
    pool: DecoderPool
    grammars: GrammarCompiler
    post: PostProcessors
    #: the session's slot is free again: called on every way out, before the end is
    #: announced
    slot_freed: Callable[[], None]
    #: publish the worker's free slots now (its heartbeat), before the client hears
    #: the end: a client that reconnects at once must find the capacity it released
    announce_slots: Callable[[], Awaitable[None]]


class ClaimedSession:
    def __init__(
        self,
        worker: WorkerServices,
        request: SessionRequest,
        entry_id: bytes,
        claim: Claim,
        slot: Slot,
    ) -> None:
        self.worker = worker
        self.sid = request.sid
        self.phrases = request.phrases
        self.skip_unknown_words = request.skip_unknown_words
        self.entry_id = entry_id
        self.claim = claim
        self.slot = slot
        self.lost = asyncio.Event()  # set by the worker's lease renewal
        self.log = SessionLog(log, self.sid)
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
            self.worker.metrics.sessions_reclaimed_total.inc()
            self.log.info(
                "taken over: resuming at segment %d, sample %d", point.segment, point.sample
            )
        else:
            self.log.info("claimed (decoder pid %d)", self.slot.pid)
        cpu = seconds = 0.0
        last: Event
        restarts = 0
        if self.worker.out_dir:
            self.saved = SessionAudio(
                self.worker.out_dir, self.sid, self.worker.sample_rate, point.sample
            )
        try:
            while True:
                try:
                    last, seconds = await self._decode(point)
                    break
                except SlotDied as exc:
                    self.worker.metrics.decoder_restarts_total.inc()
                    restarts += 1
                    cpu += await self.worker.pool.reap(self.slot)
                    if restarts > MAX_RESTARTS:
                        self.log.error("decoder process died %d times: %s", restarts, exc)
                        last = Failed(int(Status.ABORTED), "Decoder process failed")
                        break
                    self.log.warning("decoder process died (%s); resuming", exc)
                    point = await self._replay_point()
                    self.slot = await self.worker.pool.spawn()
                except SessionFailed as exc:
                    self.log.warning("session failed: %s", exc)
                    last = Failed(int(exc.status), str(exc))
                    break
        except LeaseLost:
            if not await self._record_lost():
                self.log.warning("lease lost: another worker carries on with this session")
                return
            self.log.warning("session record gone: Redis lost its data")
            last = Failed(int(Status.ABORTED), records.DATA_LOST)
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
            cpu += await self.worker.pool.retire(self.slot)
            self.worker.slot_freed()
        await self._finish(last, seconds, cpu)

    async def _release(self) -> None:
        """Give the lease up and make the entry claimable by any worker at once."""
        await records.renew(self.redis, self.keys, self.sid, self.worker.id, lease=0)
        await self.redis.xclaim(
            self.worker.stream,
            GROUP,
            self.worker.id,
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
        state = records.State.DONE if isinstance(last, Done) else records.State.FAILED
        self.worker.metrics.sessions_total.labels(state.value).inc()
        if seconds > 0:
            self.worker.metrics.decode_rtf.observe(cpu / seconds)
        self.log.info(
            "session %s: %.1f s audio, decoder CPU %.2f s (real-time factor %.2f)",
            state.value,
            seconds,
            cpu,
            cpu / seconds if seconds else 0.0,
        )
        if not await records.finish(self.redis, self.keys, self.sid, self.worker.id, state, cpu):
            self.log.warning("session taken over before it ended here: not announcing")
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(self.worker.stream, GROUP, self.entry_id)
        pipe.hincrby(self.keys.stats, "requests_processed", 1)
        # An XACK after Redis lost the consumer group (NOGROUP) must not keep the
        # client from hearing how the session ended.
        for reply in await pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception):
                self.log.warning("end bookkeeping: %s", reply)
        await self.worker.announce_slots()
        await self._publish(last)

    # --- one pass of decoding, from a replay point -----------------------------------

    async def _decode(self, point: ReplayPoint) -> tuple[Event, float]:
        await self._publish(Claimed(worker=self.worker.id))
        if self.phrases:
            # Compiled (or found in the cache) by the worker, added by the session's
            # decoder process to its own copy of the engine: see decoder_worker.grammar.
            try:
                grammar = await self.worker.grammars.compile(
                    self.phrases, skip_unknown=self.skip_unknown_words
                )
            except GrammarError as exc:
                raise SessionFailed(Status.BAD_GRAMMAR, str(exc)) from exc
            await self.slot.send(pipes.Grammar(grammar))
        start = pipes.Start(point.replay_segment, point.sample, self.worker.partial_interval)
        await self.slot.send(start)
        ledger = AudioLedger(point, self.worker.sample_rate)
        feeder = asyncio.create_task(self._feed(point.after, ledger))
        collector = asyncio.create_task(self._collect(ledger))
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
        seconds = samples / self.worker.sample_rate
        if ending == "eos":
            return Done(segments=next_segment, total=seconds), seconds
        return Failed(int(Status.ABORTED), f"Session ended: {ending}"), seconds

    async def _feed(self, after: str, ledger: AudioLedger) -> str:
        """Audio stream -> decoder process, from the entry after ``after``. Returns how
        it ended."""
        last = after
        reported = ledger.position
        progress_every = int(PROGRESS_EVERY_S * self.worker.sample_rate)
        while True:
            reply = await self.redis.xread(
                {self.keys.audio(self.sid): last}, count=64, block=int(AUDIO_TIMEOUT_S * 1000)
            )
            if not reply:
                await self.slot.send(pipes.Abort())
                return "audio timeout"
            for _stream, entries in reply:
                for raw_id, fields in entries:
                    last = raw_id.decode()
                    entry = parse_audio_entry(fields)
                    if isinstance(entry, AudioChunk):
                        if self.saved is not None:
                            self.saved.write(ledger.position, entry.pcm)
                        pcm = ledger.take(last, entry.pcm)
                        if pcm:
                            await self.slot.send(pipes.Audio(pcm))
                        if ledger.position - reported >= progress_every:
                            # Handed over: the pipes to the decoder hold only a few
                            # seconds, so this tracks decoding (gateway backpressure).
                            await self._publish(Progress(ledger.position))
                            reported = ledger.position
                    elif isinstance(entry, EndOfStream):
                        await self.slot.send(pipes.End())
                        return "eos"
                    elif isinstance(entry, Abort):
                        await self.slot.send(pipes.Abort())
                        return f"aborted: {entry.reason}"

    async def _collect(self, ledger: AudioLedger) -> tuple[int, int]:
        """Decoder process -> pub/sub and the results stream, until the session ends.
        Returns the number of the next final and the samples the decoder received."""
        while True:
            match await self.slot.recv():
                case pipes.Events(events, replay_sample, replay_segment):
                    finals = []
                    for event in events:
                        if event.segment < ledger.point.segment:
                            continue  # a replayed epoch's result, delivered before
                        if isinstance(event, Partial):
                            text = await self.worker.post.partial(event.text)
                            if text is not None:  # None: a busy post-processor skips it
                                await self._publish(PartialResult(event.segment, text))
                        elif isinstance(event, Final):
                            if event.align_failed:
                                self.worker.metrics.word_alignment_failures_total.inc()
                            words = None
                            if event.words is not None:
                                words = word_times((w.word, w.start, w.end) for w in event.words)
                            # A post-processor may change the text; the words stay the
                            # decoder's (docs/compatibility.md, "Word times").
                            final = FinalResult(
                                segment=event.segment,
                                text=event.text,
                                likelihood=event.likelihood,
                                start=event.start,
                                length=event.length,
                                total=event.total,
                                words=words,
                            )
                            finals.append(await self.worker.post.final(final, self.sid))
                    if finals or ledger.worth_saving(replay_sample):
                        await self._save(finals, ledger, replay_sample, replay_segment)
                case pipes.Ended(samples):
                    return ledger.point.segment, samples
                case pipes.NoSpeech():
                    limit = self.worker.pool.silence_timeout
                    raise SessionFailed(
                        Status.NO_SPEECH, f"No speech: {limit:g} s of audio without speech"
                    )
                case pipes.Crashed(message):
                    raise SessionFailed(Status.ABORTED, f"Decoding failed: {message}")
                case unknown:
                    assert_never(unknown)

    async def _save(
        self, finals: list[FinalResult], ledger: AudioLedger, sample: int, segment: int
    ) -> None:
        """Store the finals with the new replay point and trim the audio before it, in
        one fenced script (only while we own the session), then publish them."""
        last = finals[-1].segment if finals else None
        point, trim_before = ledger.advance(sample, last, replay_segment=segment)
        saved = await records.save_finals(
            self.redis,
            self.keys,
            self.sid,
            self.worker.id,
            [final_fields(final)["event"] for final in finals],
            point.fields(),
            trim_before,
        )
        if not saved:
            raise LeaseLost
        for final in finals:
            await self._publish(final)
