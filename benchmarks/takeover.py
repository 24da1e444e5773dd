"""Takeover trials: kill -9 the worker that owns a live session, at a random moment.

    python -m benchmarks.takeover [--trials 20] [--seed 4] [--lease 2] [--out FILE.json]

Starts a private redis-server and two workers (one slot each, ``--lease 2`` unless
told otherwise; the workers' default is 4), and an
in-process gateway. One no-fault run of a three-sentence session (~13 s of espeak-ng
Korean speech, raw PCM paced in real time) gives the expected finals. Then each trial
streams the same session and, at a moment drawn from a seeded RNG between the first
message and shortly after ``EOS``, kills the session's owner with SIGKILL; a
replacement worker is started and registered before the next trial. Per trial it
records the finals' segment numbers and texts, the finals lost (expected segment
missing or different text) and duplicated (a segment number sent twice), the close
code, the takeovers in the session record, and the recovery time: from the kill to the
next message the client received (or the close, if nothing else was left to send).

The session, the worker handling and the gateway are those of
``tests/integration/test_failover.py`` (both use :mod:`harness.failover`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from gateway.app import serve
from harness.cluster import LocalRedis, stop, wait_for_workers
from harness.failover import KEYS, PREFIX, Trial, finals, run_session
from harness.measure import percentile
from harness.media import sentences_pcm
from harness.speech import SENTENCES
from shared.config import GatewaySettings

#: The lease the trials' workers run with unless told (seconds): the bound on detection.
LEASE_S = 2.0


async def one_trial(
    trial: Trial, port: int, pcm: bytes, expected: list[tuple[int, str]], at: float
) -> dict[str, Any]:
    killed: list[float] = []
    after_kill: list[float] = []
    started: list[float] = []
    victim: list[str] = []

    async def killer() -> None:
        while not started:
            await asyncio.sleep(0.01)
        await asyncio.sleep(max(0.0, at - (time.monotonic() - started[0])))
        victim.append(await trial.owner())
        killed.append(await asyncio.to_thread(trial.kill, victim[0]))

    async def on_message(message: dict[str, Any]) -> None:
        if not started:
            started.append(time.monotonic())
        if killed and not after_kill:
            after_kill.append(time.monotonic())

    task = asyncio.create_task(killer())
    result = await run_session(port, pcm, on_message=on_message)
    end = time.monotonic()
    if not task.done():  # the session ended before the chosen moment: no fault injected
        task.cancel()
    if killed and not after_kill:
        after_kill.append(end)
    sid = result.messages[0]["id"] if result.messages else ""
    takeovers = await trial.redis.hget(KEYS.meta(sid), "takeovers") if sid else None
    got = finals(result)
    counts = Counter(seg for seg, _ in got)
    received = dict(got)
    return {
        "kill_at_s": round(at, 2),
        "killed": bool(killed),
        "victim": victim[0] if victim else None,
        "recovery_s": round(after_kill[0] - killed[0], 3) if killed else None,
        "finals": [seg for seg, _ in got],
        "lost": sum(1 for seg, text in expected if received.get(seg) != text),
        "duplicates": sum(n - 1 for n in counts.values() if n > 1),
        "extra": sum(1 for seg, _ in got if seg not in dict(expected)),
        "statuses": sorted({m.get("status", 0) for m in result.messages}),
        "close_code": result.close_code,
        "takeovers": int(takeovers) if takeovers else 0,
    }


async def run(trials: int, seed: int, redis_url: str, lease: float = LEASE_S) -> dict[str, Any]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        pcm = sentences_pcm(Path(tmp), SENTENCES)
    audio_s = len(pcm) / 32000
    trial = Trial(redis_url, lease)
    trial.start()
    trial.start()
    results: list[dict[str, Any]] = []
    try:
        await wait_for_workers(trial.redis, KEYS, 2)
        settings = GatewaySettings(
            redis_url=redis_url, prefix=PREFIX, host="127.0.0.1", port=0, log_level="warning"
        )
        async with serve(settings) as (_gateway, port):
            clean = await run_session(port, pcm)
            expected = finals(clean)
            assert len(expected) == len(SENTENCES), f"no-fault run: {expected}"
            for n in range(trials):
                at = rng.uniform(0.2, audio_s + 0.5)
                outcome = await one_trial(trial, port, pcm, expected, at)
                results.append(outcome)
                print(f"trial {n + 1}/{trials}: {json.dumps(outcome)}", flush=True)
                trial.start()  # a replacement, as a supervisor would start
                await wait_for_workers(trial.redis, KEYS, 2)
    finally:
        stop(*trial.workers.values())
        await trial.redis.aclose()
    recoveries = [r["recovery_s"] for r in results if r["recovery_s"] is not None]
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "command": "python -m benchmarks.takeover " + " ".join(sys.argv[1:]),
        "trials": trials,
        "seed": seed,
        "lease_s": lease,
        "audio_s": round(audio_s, 2),
        "expected_finals": len(expected),
        "kills": sum(1 for r in results if r["killed"]),
        "lost_finals": sum(r["lost"] for r in results),
        "duplicate_finals": sum(r["duplicates"] + r["extra"] for r in results),
        "not_closed_1000": sum(1 for r in results if r["close_code"] != 1000),
        "non_zero_status": sum(1 for r in results if r["statuses"] != [0]),
        "taken_over": sum(1 for r in results if r["takeovers"] >= 1),
        "recovery_s": {
            "p50": round(percentile(recoveries, 50), 2) if recoveries else None,
            "p95": round(percentile(recoveries, 95), 2) if recoveries else None,
            "max": round(max(recoveries), 2) if recoveries else None,
            "mean": round(statistics.fmean(recoveries), 2) if recoveries else None,
        },
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--lease", type=float, default=LEASE_S, help="the workers' --lease")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as data:
        redis = LocalRedis(Path(data))
        redis.start()
        try:
            report = asyncio.run(run(args.trials, args.seed, redis.url, args.lease))
        finally:
            redis.stop()
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=2))
    bad = report["lost_finals"] or report["duplicate_finals"] or report["not_closed_1000"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
