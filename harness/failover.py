"""A live session whose owner dies mid-stream: the tests' and the takeover trials' tools.

:class:`Trial` starts workers (one slot each, a short lease) under the key prefix
``failover`` and kills them with SIGKILL; :func:`run_session` streams raw PCM paced in
real time and hands every message to a hook; :func:`finals` is what a run is judged by.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

import websockets
from redis.asyncio import Redis

from harness.cluster import start_worker
from harness.env import UNIT
from ksc.client import Transcript, speech_url
from shared.keys import Keys

PREFIX = "failover"
KEYS = Keys(PREFIX)


class Trial:
    def __init__(self, redis_url: str, lease: float = 2.0) -> None:
        self.redis_url = redis_url
        self.lease = lease
        self.redis = Redis.from_url(redis_url)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.count = 0

    def start(self) -> None:
        self.count += 1
        wid = f"f{self.count}"
        self.workers[wid] = start_worker(self.redis_url, wid, prefix=PREFIX, lease=self.lease)

    async def owner(self) -> str:
        async with asyncio.timeout(20 * UNIT):
            while True:
                for raw in await self.redis.zrange(KEYS.live, 0, -1):
                    owner = await self.redis.hget(KEYS.meta(raw.decode()), "owner")
                    if owner:
                        return str(owner.decode())
                await asyncio.sleep(0.02)

    def kill(self, wid: str) -> float:
        proc = self.workers.pop(wid)
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(10)
        return killed


async def run_session(
    port: int, pcm: bytes, *, on_message: object = None, on_eos: object = None
) -> Transcript:
    """Raw PCM paced at real time in quarter seconds, then EOS; hooks see the progress."""
    result = Transcript()
    url = speech_url(f"ws://127.0.0.1:{port}", "audio/x-raw, rate=16000, format=S16LE")
    async with websockets.connect(url) as ws:

        async def send() -> None:
            for i in range(0, len(pcm), 8000):
                await ws.send(pcm[i : i + 8000])
                await asyncio.sleep(0.25)
            await ws.send("EOS")
            if callable(on_eos):
                await on_eos()

        sender = asyncio.create_task(send())

        async for raw in ws:
            message = json.loads(raw)
            result.messages.append(message)
            if callable(on_message):
                await on_message(message)
        sender.cancel()
        result.close_code = ws.close_code
    return result


def finals(result: Transcript) -> list[tuple[int, str]]:
    return [(f["segment"], f["result"]["hypotheses"][0]["transcript"]) for f in result.finals]
