"""What refused sessions leave in a gateway's memory.

    python -m benchmarks.refused_memory [--rounds 8] [--out benchmarks/results/refused-memory.json]

A ``ksc gateway`` with no worker, and nothing else talking to it; in each round four
clients open the vosk dialect's socket and send one large message, which the gateway
refuses: a 16 MiB binary frame (status 9, no decoder), a 4.8 MB config (status 5,
larger than 64 KiB), or the two in turn (two clients each). The gateway's RSS is read
after every round. With no other traffic its garbage collector (high thresholds,
``gateway/app.py``) seldom runs, so whatever a reference cycle holds stays: the first
soak of 2026-12-07 found the refused clients' messages held that way; the second, that
glibc kept the pages of large buffers once its mmap threshold had risen
(``docs/reliability.md``, "Soak").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import websockets

from harness.cluster import KSC, free_port, redis_server
from harness.env import REPO
from harness.measure import memory

CLIENTS_PER_ROUND = 4


async def _refused(url: str, payload: bytes | str) -> None:
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(payload)
        await asyncio.wait_for(ws.recv(), 30)


async def _drive(pid: int, url: str, payloads: list[bytes | str], rounds: int) -> list[float]:
    deadline = time.monotonic() + 60
    while True:  # the gateway may still be starting
        try:
            await _refused(url, "{}")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    rss = [memory(pid)["rss"]]
    for _ in range(rounds):
        for n in range(CLIENTS_PER_ROUND):
            await _refused(url, payloads[n % len(payloads)])
        await asyncio.sleep(0.5)
        rss.append(memory(pid)["rss"])
    return [round(r, 1) for r in rss]


def measure(redis_url: str, kind: str, rounds: int) -> list[float]:
    frame = os.urandom(16 * 1024 * 1024 - 64)
    config = json.dumps({"config": {"phrase_list": ["가 나 다"] * 400_000}})
    kinds: dict[str, list[bytes | str]] = {
        "16 MiB frame": [frame],
        "4.8 MB config": [config],
        "frame and config in turn": [frame, config],
    }
    payloads = kinds[kind]
    port = free_port()
    argv = [*KSC, "gateway", "--host", "127.0.0.1", "--port", str(port)]
    gateway = subprocess.Popen(
        [*argv, "--redis-url", redis_url, "--log-level", "warning"], cwd=REPO
    )
    try:
        return asyncio.run(_drive(gateway.pid, f"ws://127.0.0.1:{port}/vosk", payloads, rounds))
    finally:
        gateway.terminate()
        gateway.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/refused-memory.json"))
    args = parser.parse_args()
    results = {}
    with redis_server() as url:
        for kind in ("16 MiB frame", "4.8 MB config", "frame and config in turn"):
            rss = measure(url, kind, args.rounds)
            results[kind] = {
                "sessions_refused": args.rounds * CLIENTS_PER_ROUND,
                "rss_mb_after_each_round": rss,
                "growth_mb": round(rss[-1] - rss[0], 1),
            }
            print(kind, rss, flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print("written", args.out)


if __name__ == "__main__":
    main()
