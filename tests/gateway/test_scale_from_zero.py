"""A session for a model whose decoders are at zero pods: queued, counted, told, then 9.

No worker runs here and Redis holds nothing of the cluster (as after a fresh install, or
after Redis lost its data): the models the gateway's allow-list names (the Helm chart
sets it to every model of the release) must still take sessions, so that the queue's
lag tells KEDA to start a decoder, instead of answering status 8 or an immediate 9.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import websockets
from redis.asyncio import Redis

from gateway.app import serve
from harness.env import UNIT
from ksc.client import speech_url
from shared.config import GatewaySettings
from shared.keys import GROUP, Keys

WAIT_S = 3 * UNIT


async def _lag(redis: Redis, stream: str) -> int:
    groups = await redis.xinfo_groups(stream)
    return int(groups[0]["lag"]) if groups else -1


async def test_a_listed_model_at_zero_pods_queues_then_gets_9(redis_server: str) -> None:
    prefix = f"zero-{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    url = f"{redis_server}/0"
    settings = GatewaySettings(
        redis_url=url,
        prefix=prefix,
        host="127.0.0.1",
        port=0,
        model="ko",
        models="ko,ko-small",
        admission_wait=WAIT_S,
        queue_messages=True,
    )
    redis = Redis.from_url(url)
    messages: list[dict[str, Any]] = []
    try:
        async with serve(settings) as (_gateway, port):
            base = f"ws://127.0.0.1:{port}"
            async with websockets.connect(speech_url(base, model="ko-small")) as ws:
                stream = keys.sessions("ko-small")
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), 10 * UNIT)))
                # While it waits, the queue counts it: what KEDA's lag trigger reads.
                assert await _lag(redis, stream) == 1
                (group,) = await redis.xinfo_groups(stream)
                assert group["name"].decode() == GROUP and group["consumers"] == 0
                async with asyncio.timeout(WAIT_S + 10 * UNIT):
                    async for raw in ws:
                        messages.append(json.loads(raw))
                assert ws.close_code is not None
            async with websockets.connect(speech_url(base, model="nope")) as ws:
                unknown = json.loads(await asyncio.wait_for(ws.recv(), 10 * UNIT))
    finally:
        await redis.delete(keys.sessions("ko"), keys.sessions("ko-small"))
        await redis.aclose()

    assert messages[0] == {"status": 0, "id": messages[0]["id"], "queue": {"position": 1}}
    assert all("queue" in m for m in messages[:-1])
    assert messages[-1]["status"] == 9, messages
    assert unknown["status"] == 8 and "ko-small" in unknown["message"]
