"""``ksc up``: the whole cluster on this machine, in the foreground.

Starts a private ``redis-server`` (unless given a URL), one gateway, N decoder
workers and one batch worker (``ksc batch-worker``) as child processes, waits until
they are ready, transcribes the bundled sample through the gateway (printing what it
says beside what was heard), and then supervises (:mod:`ksc.up.supervisor`): a
process that exits is started again, and one that stops answering its ``/healthz``
(three checks in a row, 2 s apart, once it has answered at all) counts as hung and is
killed and started again. Ctrl-C or SIGTERM stops every process it started, Redis last.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from importlib import resources
from pathlib import Path

from ksc.client import transcribe_file
from ksc.local_redis import LocalRedis, free_port
from ksc.up.models import ModelSpec, parse_models
from ksc.up.process import Process
from ksc.up.supervisor import StartFailed, Supervisor
from shared.config import UpSettings

SAMPLE = "ko-sample.wav"
#: What the sample says (espeak-ng -v ko -s 140 of this text, 16 kHz, 0.3 s and 0.5 s of
#: silence around it).
SAMPLE_TEXT = "ko-sample.txt"


def run(settings: UpSettings) -> int:
    """Prepare, start, announce, supervise until Ctrl-C or SIGTERM; the exit code."""
    from decoder_worker.model import ModelError, prepare_model

    started = time.monotonic()
    cache = Path(settings.cache)
    models = parse_models(settings.model)
    for source in dict.fromkeys(spec.source for spec in models):
        print(f"preparing model {source} …", flush=True)
        try:
            prepare_model(source, cache_dir=cache)
        except ModelError as exc:
            raise SystemExit(f"ksc up: model {source}: {exc}") from None
    # One model per worker process; workers go round the models, at least one each.
    assigned = [models[i % len(models)] for i in range(max(settings.workers, len(models)))]
    redis = None if settings.redis_url else LocalRedis(cache / "redis")
    if redis is not None:
        redis.start()
        _forget_workers(redis.url, settings.prefix)
    redis_url = settings.redis_url or (redis.url if redis else "")
    metrics_ports = [free_port() for _ in assigned]
    processes = _processes(settings, redis_url, models, assigned, metrics_ports)
    supervisor = Supervisor(processes, redis)
    supervisor.install_signal_handlers()
    http = f"http://{_local(settings.host)}:{settings.port}"
    total_slots = sum(spec.slots(settings.slots) for spec in assigned)
    try:
        supervisor.start()
        if not supervisor.wait_until(lambda: _ready(http, total_slots)):
            return 0
        print(f"ready in {time.monotonic() - started:.1f} s", flush=True)
        _announce(settings, http, redis_url, models, assigned, metrics_ports)
        if settings.sample:
            _transcribe_sample(http)
        supervisor.check()  # a first health round: from here on a silence counts
        print("serving; Ctrl-C stops the cluster", flush=True)
        supervisor.supervise()
        return 0
    except StartFailed as exc:
        raise SystemExit(str(exc)) from None
    finally:
        print("stopping …", flush=True)
        supervisor.stop()


def _processes(
    settings: UpSettings,
    redis_url: str,
    models: list[ModelSpec],
    assigned: list[ModelSpec],
    metrics_ports: list[int],
) -> list[Process]:
    """The gateway, a worker per assigned model, and the batch worker."""
    common = ["--redis-url", redis_url, "--prefix", settings.prefix]
    common += ["--log-level", settings.log_level]
    gateway = Process(
        "gateway",
        _ksc(
            "gateway",
            *common,
            "--host",
            settings.host,
            "--port",
            str(settings.port),
            "--model",
            models[0].id,
        ),
        health=f"http://{_local(settings.host)}:{settings.port}/healthz",
    )
    workers = [
        Process(
            f"worker-{i}",
            _ksc(
                "worker",
                *common,
                "--slots",
                str(settings.slots),
                "--cache",
                settings.cache,
                "--metrics-port",
                str(port),
                *spec.argv(),
            ),
            health=f"http://127.0.0.1:{port}/healthz",
        )
        for i, (spec, port) in enumerate(zip(assigned, metrics_ports, strict=True))
    ]
    # Batch jobs (POST /v1/transcriptions) run on the same decoders; see docs/batch.md.
    return [gateway, *workers, Process("batch-worker", _ksc("batch-worker", *common))]


def _forget_workers(url: str, prefix: str) -> None:
    """Drop the heartbeats a previous run left in our own persisted Redis (a worker
    killed with -9 leaves its record until it expires): none of those workers runs."""
    import redis as redis_py

    from shared.keys import Keys

    keys = Keys(prefix)
    client = redis_py.Redis.from_url(url)
    try:
        stale = [keys.worker(w.decode()) for w in client.zrange(keys.workers, 0, -1)]
        client.delete(keys.workers, *stale)
    finally:
        client.close()


def _local(host: str) -> str:
    """An address to reach a server listening on ``host`` from this machine."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _ksc(*args: str) -> list[str]:
    return [sys.executable, "-m", "ksc", *args]


def _ready(url: str, slots: int) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:
            return bool(json.load(resp).get("slots", 0) >= slots)
    except OSError:
        return False


def _announce(
    settings: UpSettings,
    http: str,
    redis_url: str,
    models: list[ModelSpec],
    assigned: list[ModelSpec],
    metrics_ports: list[int],
) -> None:
    host = _local(settings.host)
    print(f"  web page   {http}/", flush=True)
    print(f"  websocket  ws://{host}:{settings.port}/client/ws/speech", flush=True)
    print(f"  status     ws://{host}:{settings.port}/client/ws/status", flush=True)
    print(f"  health     {http}/readyz", flush=True)
    print(f"  redis      {redis_url}", flush=True)
    print(f"  batch      POST {http}/v1/transcriptions", flush=True)
    for spec in models:
        count = sum(1 for a in assigned if a is spec)
        print(f"  model      {spec.id} ({spec.source}, {count} worker(s))", flush=True)
    ports = ", ".join(str(p) for p in metrics_ports)
    print(f"  metrics    {http}/metrics (gateway), workers on ports {ports}", flush=True)


def _transcribe_sample(http: str) -> None:
    samples = resources.files("shared") / "samples"
    with resources.as_file(samples / SAMPLE) as path:
        started = time.monotonic()
        result = transcribe_file(http.replace("http", "ws", 1), path)
    says = (samples / SAMPLE_TEXT).read_text(encoding="utf-8").strip()
    print(sample_report(SAMPLE, time.monotonic() - started, result.text, says), flush=True)


def sample_report(name: str, seconds: float, heard: str, says: str) -> str:
    """What the sample was heard as, beside what it says. The sample is espeak-ng's
    Korean voice (the only Korean speech the project may ship, and the decoder's warm-up
    audio): the model, trained on real speech, gets almost every character of it wrong
    (character error rate 1.0), which without the reference reads as a broken recogniser."""
    return (
        f"sample {name} ({seconds:.1f} s): {heard}\n"
        f"  it says: {says}\n"
        "  (a synthetic espeak-ng voice, which this model, trained on real speech, hears\n"
        "  poorly: try a real recording, or the microphone on the web page)"
    )
