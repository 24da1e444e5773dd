"""A refused session leaves no reference cycle: the gateway collects cycles rarely (its
GC thresholds are high, ``gateway/app.py``), so a cycle through a session's frames kept
the client's unread messages (up to 16 MiB each) alive for minutes (found by the soak:
gateway RSS 77 -> 137 MB)."""

from __future__ import annotations

import gc
import json
import uuid

import websockets

from gateway.app import serve
from shared.config import GatewaySettings


async def test_refused_sessions_leave_no_cycles(redis_server: str) -> None:
    settings = GatewaySettings(
        redis_url=f"{redis_server}/0",
        prefix=f"cycles-{uuid.uuid4().hex[:8]}",
        host="127.0.0.1",
        port=0,
    )
    too_big = json.dumps({"config": {"phrase_list": ["가 나 다"] * 20_000}})
    async with serve(settings) as (_gateway, port):
        gc.collect()
        gc.disable()
        try:
            for url, payload in (
                (f"ws://127.0.0.1:{port}/vosk", too_big),  # refused: text too large
                (f"ws://127.0.0.1:{port}/vosk", b"\0" * 64_000),  # refused: no decoder
                (f"ws://127.0.0.1:{port}/client/ws/speech", b"\0" * 64_000),  # the same
            ):
                async with websockets.connect(url, max_size=None) as ws:
                    await ws.send(payload)
                    reply = await ws.recv()
                    assert '"status": 5' in str(reply) or '"status": 9' in str(reply), reply
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            ours = [
                o.f_code.co_filename
                for o in gc.garbage
                if type(o).__name__ == "frame" and "/gateway/" in o.f_code.co_filename
            ]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert ours == [], f"frames of the gateway in reference cycles: {ours}"
