"""Hostile input against a real gateway and worker: every case gets a defined outcome.

    python -m benchmarks.fuzz [--rounds 20] [--idle 2000] [--seed 4]
        [--out benchmarks/results/fuzz.json]

Starts a private redis-server, one worker (4 slots) and a ``ksc gateway`` process
(``--max-frame-bytes 1 MiB``, ``--admission-wait 5``), then runs the corpus of
:mod:`harness.fuzz` (what ``tests/fuzz/`` runs, bounded) while a neighbour session of
real speech streams in real time, over and over, next to it, then thousands of idle
connections. The report counts crashes, undefined outcomes and neighbours affected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness.cluster import KSC, LocalRedis, free_port, stop, wait_ready
from harness.fuzz import RAW, Target, gateway_memory, idle_connections, run_corpus
from harness.media import sentences_pcm
from harness.speech import SENTENCES
from ksc.client import speech_url, stream


async def _script(target: Target, pid: int, rounds: int, idle: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        pcm = sentences_pcm(Path(tmp), SENTENCES)
    clean = await stream(speech_url(target.ws, RAW), pcm, realtime=False)
    expected = [(f["segment"], f["result"]["hypotheses"][0]["transcript"]) for f in clean.finals]
    warm = await run_corpus(target, pcm, expected, rounds=1, seed=seed + 1)  # warm the caches
    before = gateway_memory(pid)
    tally = await run_corpus(target, pcm, expected, rounds=rounds, seed=seed)
    tally.idle = await idle_connections(target, idle, tally, pid)
    await asyncio.sleep(2.0)
    after = gateway_memory(pid)
    return {
        "seed": seed,
        "rounds": rounds,
        "warm_up_undefined": len(warm.undefined),
        **tally.report(),
        "gateway_memory_mb": {"before": before, "after": after},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "kaldi-stream-cluster"))
    args = parser.parse_args(argv)
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    max_frame = 1024 * 1024
    with tempfile.TemporaryDirectory() as data:
        redis = LocalRedis(Path(data))
        redis.start()
        port, prefix = free_port(), "fuzz"
        common = ["--redis-url", redis.url, "--prefix", prefix, "--log-level", "error"]
        gateway = subprocess.Popen(
            [
                *KSC,
                "gateway",
                *common,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--max-frame-bytes",
                str(max_frame),
                "--admission-wait",
                "5",
            ]
        )
        worker = subprocess.Popen(
            [*KSC, "worker", *common, "--slots", "4", "--cache", args.cache, "--metrics-port", "0"]
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}", 4, limit=180)
            target = Target(f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}", max_frame)
            report = asyncio.run(_script(target, gateway.pid, args.rounds, args.idle, args.seed))
            report["crashes"] = sum(p.poll() is not None for p in (gateway, worker))
        finally:
            stop(gateway, worker)
            redis.stop()
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "command": "python -m benchmarks.fuzz " + " ".join(sys.argv[1:]),
        **report,
    }
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    bad = report["crashes"] or report["undefined_outcomes"] or report["neighbours_affected"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
