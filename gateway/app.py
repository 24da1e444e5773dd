"""The gateway process: an aiohttp application on one port for websockets and HTTP.

It keeps no session state another replica would need: a session lives in Redis, and
this process only holds the sockets of the clients connected to it.

Shutdown order (``serve``): not ready -> stop accepting -> let open sessions finish for
up to ``drain_timeout`` -> close the rest with 1012 (service restart) -> close Redis.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from aiohttp import WSMsgType, web
from redis.exceptions import RedisError

from gateway import auth, http, page, transcriptions
from gateway.speech import handle_speech
from gateway.state import GATEWAY, Gateway
from gateway.vosk import handle_vosk
from shared import cluster, metrics
from shared.config import GatewaySettings
from shared.tasks import stop_tasks

log = logging.getLogger(__name__)
STATUS_INTERVAL_S = 1.0
#: /readyz answers 503 when Redis takes longer than this.
READY_TIMEOUT_S = 1.0
#: After the drain timeout, how long closed sessions get to finish their handlers.
_CLOSE_GRACE_S = 5.0
#: The garbage collector's thresholds in a gateway process (CPython's are 700, 10, 10).
GC_THRESHOLDS = (10_000, 20, 20)


async def handle_status(request: web.Request) -> web.WebSocketResponse:
    """``/client/ws/status``: the cluster's counters now, then whenever they change."""
    gateway = request.app[GATEWAY]
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    last = ""

    async def push() -> None:
        nonlocal last
        while not ws.closed:
            try:
                text = (await gateway.cluster_status()).serialize()
            except (RedisError, OSError) as exc:  # Redis down: try again next round
                log.debug("status: %s", exc)
                text = last
            if text != last:
                await ws.send_str(text)
                last = text
            await asyncio.sleep(STATUS_INTERVAL_S)

    pusher = asyncio.create_task(push())
    try:
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break
    finally:
        await stop_tasks(pusher)
    return ws


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    """Ready while serving, Redis answers and at least one decoder slot is registered."""
    gateway = request.app[GATEWAY]
    if not gateway.ready:
        return web.json_response({"ready": False, "reason": "shutting down"}, status=503)
    try:
        # The client retries a dead connection for seconds; a probe wants an answer now.
        async with asyncio.timeout(READY_TIMEOUT_S):
            workers = await cluster.workers(gateway.redis, gateway.keys)
    except TimeoutError:
        return web.json_response({"ready": False, "reason": "redis: no answer"}, status=503)
    except (RedisError, OSError) as exc:
        return web.json_response({"ready": False, "reason": f"redis: {exc}"}, status=503)
    slots = sum(w.slots_total for w in workers)
    if slots == 0:
        return web.json_response({"ready": False, "reason": "no decoder registered"}, status=503)
    return web.json_response({"ready": True, "slots": slots, "workers": len(workers)})


async def handle_cluster(request: web.Request) -> web.Response:
    """``/status``: the ``ksc status --json`` document."""
    gateway = request.app[GATEWAY]
    snap = await cluster.snapshot(gateway.redis, gateway.keys)
    snap["batch"] = await transcriptions.job_counts(request.app)
    return web.json_response(snap)


def create_app(gateway: Gateway) -> web.Application:
    # Origin check and authentication for every transport at once (gateway/auth.py).
    app = web.Application(
        middlewares=[auth.middleware(gateway.auth, gateway.settings.cors_origins)]
    )
    app[GATEWAY] = gateway
    app.router.add_get("/client/ws/speech", handle_speech)
    app.router.add_get("/client/ws/status", handle_status)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/status", handle_cluster)
    http.add_routes(app)
    transcriptions.add_routes(app)
    page.add_routes(app, upgrade=handle_vosk)  # vosk-server's dialect at / too
    app.router.add_get("/vosk", handle_vosk)
    app.router.add_get("/metrics", metrics.handler(gateway.metrics.registry))
    return app


@asynccontextmanager
async def serve(settings: GatewaySettings) -> AsyncIterator[tuple[Gateway, int]]:
    """Run a gateway until the block exits; yields it and the bound port (port 0 works)."""
    gateway = Gateway(settings)
    await gateway.start()
    runner = web.AppRunner(
        create_app(gateway),
        handle_signals=False,
        shutdown_timeout=5.0,
        access_log_class=auth.AccessLogger,  # no query strings: they may carry ?token=
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    port = int(runner.addresses[0][1])
    log.info("gateway listening on %s:%d", settings.host, port)
    try:
        yield gateway, port
    finally:
        gateway.ready = False
        for site_ in list(runner.sites):
            await site_.stop()  # the listener closes; open connections carry on
        await _wait_for_sessions(gateway, settings.drain_timeout)
        if gateway.sessions:
            log.info("drain timeout: closing %d sessions", len(gateway.sessions))
            await gateway.close_sessions()
            await _wait_for_sessions(gateway, _CLOSE_GRACE_S)  # handlers clean up
        await runner.cleanup()
        await gateway.close()


async def _wait_for_sessions(gateway: Gateway, limit: float) -> None:
    with suppress(TimeoutError):
        async with asyncio.timeout(limit):
            while gateway.sessions:
                await asyncio.sleep(0.05)


async def run(settings: GatewaySettings) -> None:
    """The ``ksc gateway`` process: serve until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(settings):
        _tune_gc()
        await stop.wait()
        log.info("gateway stopping")


def _tune_gc() -> None:
    """Collect less often, and never scan what was loaded at startup again.

    Every frame allocates a few short-lived objects (futures, Redis replies); with
    CPython's defaults they trigger a full collection every few seconds at 500 streams,
    each stopping the event loop for 100-150 ms and delaying every stream's frames
    (``python -m benchmarks.gateway_load``, ``docs/performance.md``). Reference
    counting still frees them at once: only cycles wait for the collector.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
