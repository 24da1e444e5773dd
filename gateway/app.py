"""The gateway process: an aiohttp application on one port for websockets and HTTP.

It keeps no session state another replica would need: a session lives in Redis, and
this process only holds the sockets of the clients connected to it.

Shutdown order (``serve``): not ready -> stop accepting -> let open sessions finish for
up to ``drain_timeout`` -> close the rest, and the status sockets, with 1012 (service
restart) -> close Redis.

Open to anyone who reaches the port, whether authentication is on or not:
``/healthz``, ``/readyz`` and ``/metrics`` (``/readyz`` says "redis unavailable", never
Redis's own error text) and the browser page. ``/status`` and every websocket need a
credential when authentication is on (:mod:`gateway.auth`).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from aiohttp import WSCloseCode, WSMsgType, web
from redis.exceptions import RedisError

from gateway import auth, http, page, transcriptions
from gateway.speech import handle_speech
from gateway.state import GATEWAY, Gateway
from gateway.status import StatusFeed
from gateway.vosk import handle_vosk
from shared import metrics
from shared.config import GatewaySettings
from shared.protocol import ErrorReply, Status
from shared.tasks import stop_tasks

log = logging.getLogger(__name__)
#: /readyz answers 503 when Redis takes longer than this.
READY_TIMEOUT_S = 1.0
#: ``Retry-After`` when this gateway has its maximum of status sockets.
STATUS_RETRY_AFTER_S = 5
#: Why a status socket is closed when its token expires (RFC 6455 policy violation).
TOKEN_EXPIRED = (WSCloseCode.POLICY_VIOLATION, b"token expired")
#: After the drain timeout, how long closed sessions get to finish their handlers.
_CLOSE_GRACE_S = 5.0
#: The garbage collector's thresholds in a gateway process (CPython's are 700, 10, 10).
GC_THRESHOLDS = (10_000, 20, 20)
#: glibc's ``mallopt`` parameter number of the mmap threshold, and the value pinned.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


async def handle_status(request: web.Request) -> web.StreamResponse:
    """``/client/ws/status``: the cluster's counters now, then whenever they change.

    Every socket of the process is fed by the one poller of :class:`StatusFeed`; past
    ``status_max_sockets`` a new one gets 503. A socket opened with a signed token is
    closed (1008, "token expired") when the token expires.
    """
    feed = request.app[GATEWAY].view.feed
    ws = web.WebSocketResponse(heartbeat=30)
    if not feed.join(ws):
        body = ErrorReply(
            Status.NOT_AVAILABLE, "Too many status sockets on this gateway; try again later"
        ).serialize()
        headers = {"Retry-After": str(STATUS_RETRY_AFTER_S)}
        return web.Response(status=503, text=body, content_type="application/json", headers=headers)
    try:
        await ws.prepare(request)
        principal = auth.PRINCIPAL.get()
        deadline = None
        if principal is not None and principal.expires is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + (principal.expires - time.time())
        pusher = asyncio.create_task(_push_status(feed, ws))
        try:
            async with asyncio.timeout_at(deadline) as window:
                async for msg in ws:
                    if msg.type == WSMsgType.ERROR:
                        break
        except TimeoutError:
            if not window.expired():
                raise
            code, reason = TOKEN_EXPIRED
            await ws.close(code=code, message=reason)
        finally:
            await stop_tasks(pusher)
    finally:
        feed.leave(ws)
    return ws


async def _push_status(feed: StatusFeed, ws: web.WebSocketResponse) -> None:
    seen = 0
    while not ws.closed:
        seen, text = await feed.next(seen)
        await ws.send_str(text)


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    """Ready while serving, Redis answers and a live worker that is not draining has
    slots (live: a heartbeat younger than ``WORKER_LIVE_S``, in Redis time).

    Open to anyone: the reason it gives is generic; Redis's own error goes to the log
    (once per change, not once per probe)."""
    gateway = request.app[GATEWAY]
    view = gateway.view
    if not gateway.ready:
        return web.json_response({"ready": False, "reason": "shutting down"}, status=503)
    try:
        # The client retries a dead connection for seconds; a probe wants an answer now.
        async with asyncio.timeout(READY_TIMEOUT_S):
            workers = await view.workers.get()
    except (TimeoutError, RedisError, OSError) as exc:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else "no answer in time"
        if view.unready != detail:
            log.warning("not ready: Redis: %s", detail)
            view.unready = detail
        return web.json_response({"ready": False, "reason": "redis unavailable"}, status=503)
    view.unready = None
    serving = [w for w in workers if not w.draining]  # live, and taking sessions
    slots = sum(w.slots_total for w in serving)
    if slots == 0:
        return web.json_response({"ready": False, "reason": "no decoder registered"}, status=503)
    return web.json_response({"ready": True, "slots": slots, "workers": len(serving)})


async def handle_cluster(request: web.Request) -> web.Response:
    """``/status``: the ``ksc status --json`` document (its sessions capped, see
    :mod:`gateway.status`), at most one Redis read of it per second."""
    gateway = request.app[GATEWAY]
    try:
        snap = dict(await gateway.view.snapshot.get())
    except (RedisError, OSError) as exc:
        log.warning("/status: Redis unavailable: %s", exc)
        return web.json_response({"error": "redis unavailable"}, status=503)
    snap["batch"] = await transcriptions.job_counts(request.app)
    return web.json_response(snap)


def create_app(gateway: Gateway) -> web.Application:
    # Host and Origin checks and authentication for every transport at once
    # (gateway/auth.py, gateway/origins.py).
    app = web.Application(middlewares=[auth.middleware(gateway.auth, gateway.settings)])
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
        await gateway.view.feed.close()
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
        _return_large_buffers()
        await stop.wait()
        log.info("gateway stopping")


def _return_large_buffers() -> bool:
    """Give the memory of every buffer of 1 MiB or more back to the system when it is
    freed; whether that could be set (glibc only).

    glibc serves large allocations with their own ``mmap`` and unmaps them on free,
    but it raises that threshold to the size of the largest block freed so far (up to
    32 MiB). After one 16 MiB frame, the buffers of every later large message (a
    client's oversized frame or config, a long upload) came from the heap instead, and
    their pages stayed with the process: the soak of 2026-12-07 saw the gateway's RSS
    swing by 17 MB with each such message (``docs/reliability.md``, "Soak"). A fixed
    threshold switches that adjustment off.
    """
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc
        return False


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
