"""What refused sessions leave in a gateway's memory.

    python -m benchmarks.refused_memory [--rounds 8] [--out benchmarks/results/refused-memory.json]

A ``ksc gateway`` with no worker, and nothing else talking to it; in each round four
clients open the vosk dialect's socket and send one large message, which the gateway
refuses: a 16 MiB binary frame (status 9, no decoder) or a 4.8 MB config (status 5,
larger than 64 KiB). The gateway's RSS is read after every round. With no other
traffic its garbage collector (high thresholds, ``gateway/app.py``) seldom runs, so
whatever a reference cycle holds stays: the soak of 2026-12-07 found the refused
clients' messages held that way (``docs/reliability.md``, "Soak").
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


async def _drive(pid: int, url: str, payload: bytes | str, rounds: int) -> list[float]:
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
        for _ in range(CLIENTS_PER_ROUND):
            await _refused(url, payload)
        await asyncio.sleep(0.5)
        rss.append(memory(pid)["rss"])
    return [round(r, 1) for r in rss]


def measure(redis_url: str, kind: str, rounds: int) -> list[float]:
    payload: bytes | str
    if kind == "16 MiB frame":
        payload = os.urandom(16 * 1024 * 1024 - 64)
    else:
        payload = json.dumps({"config": {"phrase_list": ["가 나 다"] * 400_000}})
    port = free_port()
    argv = [*KSC, "gateway", "--host", "127.0.0.1", "--port", str(port)]
    gateway = subprocess.Popen(
        [*argv, "--redis-url", redis_url, "--log-level", "warning"], cwd=REPO
    )
    try:
        return asyncio.run(_drive(gateway.pid, f"ws://127.0.0.1:{port}/vosk", payload, rounds))
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
        for kind in ("16 MiB frame", "4.8 MB config"):
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
