"""The decoder worker: claims sessions while it has a free slot and decodes them.

Where a session is claimed: :meth:`Worker._claim_loop`. Holding a free slot, it first
asks for sessions whose owner stopped renewing its lease (``XAUTOCLAIM`` on the model's
sessions stream, consumer group ``decoders``), then for new ones (``XREADGROUP``), and
wins a session with an atomic script on its record (:func:`shared.records.claim`).
Each session then runs as a :class:`~decoder_worker.claimed.ClaimedSession`.

Every heartbeat renews the lease of each running session, both in its record and by
resetting its pending entry's idle time (``XCLAIM … JUSTID``).

Redis going away: the heartbeat and the claim loop log, back off and try again; a
consumer group that vanished (Redis restarted without its data) is created again.
Sessions meeting the outage are handled in :mod:`decoder_worker.claimed`.

Shutdown: stop claiming -> advertise no free slot -> let running sessions finish for up
to ``drain_timeout`` -> release the rest to other workers -> stop the decoder processes
-> remove the heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from decoder_worker.claimed import ClaimedSession, WorkerServices
from decoder_worker.gate import CpuGate, usable_cpus
from decoder_worker.grammar import GrammarCompiler
from decoder_worker.model import PreparedModel
from decoder_worker.postprocess import PostProcessors
from decoder_worker.slots import DecoderPool
from shared import cluster, metrics, records, redis_client
from shared.config import WorkerSettings
from shared.keys import GROUP, HEARTBEAT_INTERVAL_S, Keys
from shared.metrics import WorkerMetrics
from shared.records import Claim
from shared.tasks import stop_tasks
from shared.version import VERSION
from shared.wire import SessionRequest

log = logging.getLogger(__name__)
_BLOCK_MS = 500


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        pool: DecoderPool,
        sample_rate: int,
        *,
        grammars: GrammarCompiler | None = None,
    ) -> None:
        self.settings = settings
        #: phrase lists -> grammars for this model (none: every phrase list is refused)
        self.grammars = grammars or GrammarCompiler(Path("words.txt"), supported=False)
        self.pool = pool
        self.sample_rate = sample_rate
        self.keys = Keys(settings.prefix)
        self.id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.redis: Redis = redis_client.connect(settings.redis_url)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runs: dict[str, ClaimedSession] = {}
        self._busy = 0
        self.draining = False
        self.metrics = WorkerMetrics()
        self.metrics.slots_total.set(pool.size)
        self._beat_now = asyncio.Event()
        self.stream = self.keys.sessions(settings.model_id)
        self.post = PostProcessors(
            settings.post_processor, settings.full_post_processor, settings.post_processor_timeout
        )
        #: what each claimed session gets to see of this worker
        self.services = WorkerServices(
            redis=self.redis,
            keys=self.keys,
            id=self.id,
            stream=self.stream,
            sample_rate=sample_rate,
            partial_interval=settings.partial_interval,
            out_dir=settings.out_dir,
            metrics=self.metrics,
            pool=pool,
            grammars=self.grammars,
            post=self.post,
            slot_freed=self.session_finished,
            announce_slots=self.heartbeat_once,
        )

    # --- lifecycle -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        metrics_site = await self._serve_metrics()
        failures = 0
        while True:  # Redis may still be starting
            try:
                await self._ensure_group()
                await self.heartbeat_once()
                break
            except (OSError, RedisError) as exc:
                failures += 1
                log.warning("Redis not reachable yet (%s); retrying", exc)
                await asyncio.sleep(redis_client.backoff(failures))
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
            await stop_tasks(claimer)
            with suppress(Exception):
                await self.heartbeat_once()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=self.settings.drain_timeout)
            await stop_tasks(*self._tasks, heartbeat)
            await self.pool.close()
            await self.post.close()
            with suppress(Exception):
                await cluster.leave(self.redis, self.keys, self.id)
            await self.redis.aclose()
            if metrics_site is not None:
                await metrics_site.cleanup()

    async def _ensure_group(self) -> None:
        await cluster.ensure_queue(self.redis, self.keys, self.settings.model_id)

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

    async def heartbeat_once(self) -> None:
        self.metrics.slots_free.set(self.slots_free)
        heartbeat = cluster.Heartbeat(
            host=socket.gethostname(),
            pid=os.getpid(),
            slots_total=self.pool.size,
            slots_free=self.slots_free,
            models=(self.settings.model_id,),
            version=VERSION,
            draining=self.draining,
        )
        await cluster.beat(self.redis, self.keys, self.id, heartbeat, self.sample_rate)

    async def _heartbeat(self) -> None:
        """Refresh the heartbeat periodically, and at once when the free slots change."""
        while True:
            with suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT_INTERVAL_S):
                    await self._beat_now.wait()
            self._beat_now.clear()
            try:
                await self.heartbeat_once()
                await self._renew_leases()
            except (OSError, RedisError) as exc:
                log.warning("heartbeat failed: %s", exc)

    # --- claiming --------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        failures = 0
        while True:
            await self.pool.reserve()
            try:
                entry_id, request, claim = await self._next_claim()
                slot = await self.pool.spawn()
            except (OSError, RedisError) as exc:
                self.pool.unreserve()
                failures += 1
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    # Redis came back without our data: the stream and group are new.
                    log.warning("consumer group %s missing; creating it again", GROUP)
                    with suppress(OSError, RedisError):
                        await self._ensure_group()
                elif failures == 1 or failures % 10 == 0:
                    log.warning("claiming failed (%s); backing off", exc)
                await asyncio.sleep(redis_client.backoff(failures))
                continue
            except BaseException:
                self.pool.unreserve()
                raise
            failures = 0
            self._busy += 1
            self._beat_now.set()
            run = ClaimedSession(self.services, request, entry_id, claim, slot)
            self._runs[request.sid] = run
            task = asyncio.create_task(run.run(), name=request.sid)
            self._tasks.add(task)
            task.add_done_callback(self._session_done)

    async def _next_claim(self) -> tuple[bytes, SessionRequest, Claim]:
        lease = self.settings.lease
        while True:
            entry_id, request = await self._next_request()
            if request.sid in self._runs:
                continue  # our own, renewed late: it is running here
            claim = await records.claim(self.redis, self.keys, request.sid, self.id, lease)
            if claim in (Claim.NEW, Claim.RESUME):
                return entry_id, request, claim
            if claim is None:  # ended or cancelled: nothing left to do
                await self.redis.xack(self.stream, GROUP, entry_id)
            # Claim.BUSY: its owner is alive after all; its next renewal takes it back.

    async def _next_request(self) -> tuple[bytes, SessionRequest]:
        """A session whose owner went quiet for a lease, else a new one."""
        idle_ms = int(self.settings.lease * 1000)
        while True:
            _next, stale, _deleted = await self.redis.xautoclaim(
                self.stream, GROUP, self.id, min_idle_time=idle_ms, start_id="0-0", count=1
            )
            for entry_id, fields in stale:
                if fields:
                    return entry_id, SessionRequest.parse(fields)
            reply = await self.redis.xreadgroup(
                GROUP, self.id, {self.stream: ">"}, count=1, block=_BLOCK_MS
            )
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    return entry_id, SessionRequest.parse(fields)

    def _session_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._runs.pop(task.get_name(), None)
        if not task.cancelled() and task.exception() is not None:
            log.error("session task %s failed", task.get_name(), exc_info=task.exception())

    def session_finished(self) -> None:
        """A session gave its slot back (called before its end is announced)."""
        self._busy -= 1

    async def _renew_leases(self) -> None:
        lease = self.settings.lease
        for run in list(self._runs.values()):
            if not await records.renew(self.redis, self.keys, run.sid, self.id, lease):
                run.lost.set()
                continue
            # NOGROUP (Redis lost the group) must not stop the renewal of the others.
            with suppress(ResponseError):
                await self.redis.xclaim(self.stream, GROUP, self.id, 0, [run.entry_id], justid=True)


def tuned(
    model: PreparedModel, settings: WorkerSettings, endpoint: Mapping[str, Any]
) -> PreparedModel:
    """The model with the decoder settings (``--beam`` …) and endpoint rules (from the
    YAML file) the operator gave in place of those of its ``model.conf``."""
    decoder = dict(model.decoder)
    for name in ("beam", "max_active", "lattice_beam"):
        value = getattr(settings, name)
        if value < 0:
            raise SystemExit(f"--{name.replace('_', '-')} must not be negative")
        if value:
            decoder[name] = value
    if decoder.get("max_active", 1) < decoder.get("min_active", 0):
        raise SystemExit(
            f"max-active {decoder['max_active']} is below the model's min-active "
            f"{decoder['min_active']}"
        )
    return replace(model, decoder=decoder, endpoint=replace(model.endpoint, **endpoint))


async def run(settings: WorkerSettings, endpoint: Mapping[str, Any] | None = None) -> None:
    """The ``ksc worker`` process: prepare and load the model, then serve until SIGTERM."""
    from pathlib import Path

    from decoder_worker.engine import KagEngine
    from decoder_worker.model import ModelError, load_prepared, prepare_model

    try:
        model = load_prepared(prepare_model(settings.model, cache_dir=Path(settings.cache)))
    except ModelError as exc:  # e.g. a stale model on a read-only root: say so, no traceback
        raise SystemExit(f"cannot serve model {settings.model}: {exc}") from None
    model = tuned(model, settings, endpoint or {})
    log.info("decoder settings %s, endpoint rules %s", model.decoder, model.endpoint)
    started = time.monotonic()
    engine = KagEngine.load(model, word_times=settings.word_times)
    if engine.aligner is not None:
        times = "on"
    else:
        times = "off (the model has no alignment lexicon)" if settings.word_times else "off"
    log.info(
        "model %s loaded in %.1f s; word times %s", model.path, time.monotonic() - started, times
    )
    if settings.decoding_cpus < 0:
        raise SystemExit("--decoding-cpus must not be negative")
    gate = CpuGate(settings.decoding_cpus or usable_cpus())
    log.info("%d utterances decode at one moment", gate.tokens)
    try:
        pool = DecoderPool(
            engine,
            model.endpoint,
            settings.slots,
            silence_timeout=settings.silence_timeout,
            gate=gate,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        grammars = GrammarCompiler(model.path / "words.txt", supported=model.kind == "lookahead")
        await Worker(settings, pool, model.sample_rate, grammars=grammars).run(stop)
    finally:
        gate.remove()
