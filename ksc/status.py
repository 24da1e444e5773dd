"""``ksc status`` (workers, live sessions, batch jobs) and ``ksc check`` (probes).

Both read the cluster as Redis holds it (:mod:`shared.cluster`), or ask a gateway.
``ksc check`` runs every few seconds inside a pod's CPU limit, so what it does not
need (rq, for batch jobs) is imported only by ``ksc status``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import urllib.request
from typing import Any

from redis.exceptions import RedisError

from shared import cluster, redis_client
from shared.config import CommonSettings, WorkerSettings
from shared.keys import Keys
from shared.redis_client import RedisURLError


def show(settings: CommonSettings, *, url: str | None, as_json: bool, api_key: str = "") -> int:
    """Print the cluster's state (from ``url``'s ``/status`` if given, else Redis);
    ``api_key`` for a gateway that requires one."""
    try:
        if url:
            headers = {"X-API-Key": api_key} if api_key else {}
            request = urllib.request.Request(url.rstrip("/") + "/status", headers=headers)
            with urllib.request.urlopen(request, timeout=5) as resp:
                snap = json.load(resp)
        else:
            snap = _from_redis(settings)
    except (OSError, RedisError, RedisURLError) as exc:
        where = url or _without_password(settings.redis_url)
        print(
            f"ksc status: cannot read the cluster from {where}: {exc}\n"
            "Is it running? `ksc up` prints its Redis URL (`redis …`): pass it with "
            "--redis-url, or ask a gateway with --url http://HOST:8888",
            file=sys.stderr,
        )
        return 1
    if as_json:
        print(json.dumps(snap, indent=2, ensure_ascii=False))
        return 0
    print(f"workers: {len(snap['workers'])}   requests processed: {snap['requests_processed']}")
    rows: list[tuple[str, ...]] = [("ID", "HOST", "PID", "SLOTS FREE/TOTAL", "MODELS")]
    rows += [
        (
            w["id"],
            w["host"],
            str(w["pid"]),
            f"{w['slots_free']}/{w['slots_total']}",
            ",".join(w["models"]),
        )
        for w in snap["workers"]
    ]
    _table(rows)
    live = snap.get("sessions_total", len(snap["sessions"]))
    shown = "" if live == len(snap["sessions"]) else f" (the oldest {len(snap['sessions'])} shown)"
    print(f"\nlive sessions: {live}{shown}")
    rows = [("ID", "MODEL", "STATE", "OWNER", "AUDIO S", "AGE S", "TAKEN OVER")]
    rows += [
        (
            s["id"],
            s["model"],
            s["state"],
            s["owner"],
            f"{s['audio_seconds']:.1f}",
            f"{s['age']:.0f}",
            f"{s['takeovers']}x" if s.get("takeovers") else "",
        )
        for s in snap["sessions"]
    ]
    _table(rows)
    jobs = snap.get("batch")
    if jobs is not None:
        print("\nbatch jobs: " + "   ".join(f"{state} {jobs.get(state, 0)}" for state in jobs))
    p = settings.prefix
    print(
        "\nthe same raw data with redis-cli:\n"
        f"  XINFO GROUPS {p}:sessions:MODEL         # lag = waiting, pending = decoding\n"
        f"  XPENDING {p}:sessions:MODEL decoders    # which worker has which session\n"
        f"  HGETALL {p}:worker:WORKER_ID            # a worker's heartbeat\n"
        f"  HGETALL '{p}:{{SESSION_ID}}:meta'         # a session's record\n"
        f"  XRANGE '{p}:{{SESSION_ID}}:results' - +   # its finals\n"
        f"batch jobs with rq:\n"
        f"  rq info --url REDIS_URL {p}-batch       # queue and rq workers\n"
        f"  HGETALL rq:job:JOB_ID                   # a batch job (JSON fields)"
    )
    return 0


def _without_password(url: str) -> str:
    """A Redis URL fit to print: ``redis://:secret@host`` -> ``redis://:***@host``."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


def _from_redis(settings: CommonSettings) -> dict[str, Any]:
    async def fetch() -> dict[str, Any]:
        redis = redis_client.connect(settings.redis_url)
        try:
            return await cluster.snapshot(redis, Keys(settings.prefix))
        finally:
            await redis.aclose()

    snap = asyncio.run(fetch())
    snap["batch"] = _batch_counts(settings)
    return snap


def _batch_counts(settings: CommonSettings) -> dict[str, int] | None:
    """Batch jobs by state (rq's queue and registries); None if they cannot be read."""
    from shared import jobs

    try:
        connection = jobs.connect_sync(settings.redis_url)
        try:
            return jobs.counts(connection, Keys(settings.prefix))
        finally:
            connection.close()
    except (RedisError, OSError, RedisURLError):
        return None


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def check_gateway(url: str) -> int:
    """0 when the gateway at ``url`` says it is ready, else 1 with the reason."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/readyz", timeout=5) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as exc:
        print(f"gateway not ready: {exc}", file=sys.stderr)
        return 1


def check_worker(settings: WorkerSettings) -> int:
    """0 while this worker's heartbeat is fresh (by ``--worker-id``, else this host's)."""

    async def heartbeat_age() -> float | None:
        redis = redis_client.connect(settings.redis_url)
        try:
            for worker in await cluster.workers(redis, Keys(settings.prefix)):
                if worker.id == settings.worker_id or (
                    not settings.worker_id and worker.host == socket.gethostname()
                ):
                    return worker.heartbeat_age
            return None
        finally:
            await redis.aclose()

    try:
        age = asyncio.run(heartbeat_age())
    except (OSError, RedisError) as exc:
        print(f"redis unreachable: {exc}", file=sys.stderr)
        return 1
    if age is None:
        print("no fresh heartbeat for this worker", file=sys.stderr)
        return 1
    return 0
