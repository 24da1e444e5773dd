"""Large messages give their memory back: a ``ksc gateway`` process refuses 16 MiB frames
and a 4 MB config, and its RSS ends where it began.

glibc raises its mmap threshold after the first large free, and the buffers of later
large messages then came from the heap and stayed with the process (the soak saw the
gateway swing by 17 MB a message, ``docs/reliability.md``); the gateway pins the
threshold (``gateway/app.py``, ``_return_large_buffers``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

import websockets

from harness.cluster import free_port, start_gateway, stop
from harness.measure import memory

GROWTH_LIMIT_MB = 8.0  # without the pinned threshold: about 16 MB


async def _refused(url: str, payload: bytes | str) -> None:
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(payload)
        reply = await asyncio.wait_for(ws.recv(), 30)
        assert '"status": 5' in str(reply) or '"status": 9' in str(reply), reply


async def test_large_messages_leave_no_rss_behind(redis_server: str) -> None:
    port = free_port()
    gateway = start_gateway(f"{redis_server}/0", f"buffers-{uuid.uuid4().hex[:8]}", port)
    url = f"ws://127.0.0.1:{port}/vosk"
    try:
        deadline = time.monotonic() + 60
        while True:  # until it listens
            try:
                await _refused(url, b"\0" * 8000)  # no decoder: status 9
                break
            except OSError:
                assert time.monotonic() < deadline, "the gateway did not start"
                await asyncio.sleep(0.2)
        before = memory(gateway.pid)["rss"]
        config = json.dumps({"config": {"phrase_list": ["가 나 다"] * 400_000}})
        for _ in range(2):
            await _refused(url, os.urandom(16 * 1024 * 1024 - 64))  # status 9
            await _refused(url, config)  # status 5: larger than 64 KiB
        await asyncio.sleep(0.5)
        after = memory(gateway.pid)["rss"]
    finally:
        stop(gateway)
    assert after - before < GROWTH_LIMIT_MB, (before, after)
