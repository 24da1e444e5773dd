"""Worker memory and decode cost with concurrent sessions, through the whole cluster.

    python -m benchmarks.cluster [--sessions 4] [--out benchmarks/results/cluster.json]

Starts a private redis-server, one gateway and one worker with ``--sessions`` slots,
then streams that many real recordings at once, paced in real time as a live client
would. While they run it samples the proportional set size (PSS: shared pages split
between the processes sharing them) and RSS of the worker and of all its descendants
(session processes and the utterance decoders they fork) from ``/proc``. Reports the
idle worker (the loaded model), the peak with all sessions live, the cost of each
additional session, and every session's decoder CPU real-time factor (from the
worker's ``wait4`` accounting in the session record).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.cluster import KSC, LocalRedis, free_port, stop, wait_ready
from harness.measure import tree_memory
from harness.scoring import DEFAULT_CLIPS, cer, read_manifest
from ksc.client import Transcript, speech_url, stream
from shared import redis_client
from shared.keys import Keys


async def sampled_sessions(
    ws: str, paths: list[Path], worker: int
) -> tuple[dict[str, Any], list[Transcript]]:
    """Stream ``paths`` at once, in real time, sampling the worker's process tree's
    memory every 0.5 s; (the sample with the highest total PSS while every session had
    its processes, the transcripts)."""
    samples: list[dict[str, Any]] = []

    async def sampler() -> None:
        while True:
            samples.append(tree_memory(worker))
            await asyncio.sleep(0.5)

    task = asyncio.create_task(sampler())
    try:
        results = await asyncio.gather(
            *(stream(speech_url(ws), path.read_bytes(), realtime=True) for path in paths)
        )
    finally:
        task.cancel()
    full = [s for s in samples if len(s["children"]) >= 2 * len(paths)]
    return max(full or samples, key=lambda s: s["total_pss_mb"]), list(results)


async def run_sessions(ws: str, clips: list[tuple[Path, str]], worker: int) -> dict[str, Any]:
    peak, results = await sampled_sessions(ws, [path for path, _ in clips], worker)
    edits = chars = 0
    for (_, ref), result in zip(clips, results, strict=True):
        e, c = cer(ref, result.text)
        edits += e
        chars += c
    return {"peak": peak, "cer": edits / chars, "sids": [r.messages[0]["id"] for r in results]}


async def decoder_cpu(redis_url: str, prefix: str, sids: list[str]) -> list[dict[str, float]]:
    redis = redis_client.connect(redis_url)
    keys = Keys(prefix)
    out = []
    for sid in sids:
        meta = await redis.hgetall(keys.meta(sid))
        cpu = float(meta[b"decoder_cpu"])
        audio = int(meta[b"audio_bytes"]) / 2 / int(meta[b"sample_rate"])
        out.append({"cpu_s": cpu, "audio_s": round(audio, 2), "rtf": round(cpu / audio, 3)})
    await redis.aclose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "kaldi-stream-cluster"))
    args = parser.parse_args(argv)
    # The longest clips, so that every session is live at the same time for a while.
    items = sorted(read_manifest(args.clips), key=lambda i: -i[0].stat().st_size)[: args.sessions]
    work = Path(f"/tmp/ksc-bench-{os.getpid()}")
    redis = LocalRedis(work / "redis")
    redis.start()
    port, prefix = free_port(), "bench"
    common = ["--redis-url", redis.url, "--prefix", prefix, "--log-level", "warning"]
    gateway = subprocess.Popen([*KSC, "gateway", *common, "--port", str(port)])
    worker = subprocess.Popen(
        [*KSC, "worker", *common, "--slots", str(args.sessions), "--cache", args.cache]
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", args.sessions)
        time.sleep(1.0)
        idle = tree_memory(worker.pid)
        live = asyncio.run(run_sessions(f"ws://127.0.0.1:{port}", items, worker.pid))
        time.sleep(1.0)
        after = tree_memory(worker.pid)
        cpu = asyncio.run(decoder_cpu(redis.url, prefix, live["sids"]))
    finally:
        stop(gateway, worker)
        redis.stop()
    n = args.sessions
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "sessions": n,
        "idle_worker": idle["parent"],
        "peak_total_pss_mb": round(live["peak"]["total_pss_mb"], 1),
        "peak_children": live["peak"]["children"],
        "pss_per_session_mb": round((live["peak"]["total_pss_mb"] - idle["total_pss_mb"]) / n, 1),
        "worker_after_sessions": after["parent"],
        "decoder_cpu": cpu,
        "rtf_mean": round(sum(c["rtf"] for c in cpu) / len(cpu), 3),
        "cer_of_these_clips": round(live["cer"], 3),
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
