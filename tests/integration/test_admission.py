"""Admission with a wait: queue-position messages when enabled, none by default."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
import websockets

from gateway.app import serve
from gateway.runner import QUEUE_REPORT_INTERVAL_S
from harness.cluster import Cluster
from harness.env import UNIT
from ksc.client import speech_url
from shared import cluster
from shared.config import GatewaySettings
from shared.keys import Keys
from tests.integration.conftest import PREFIX

KEYS = Keys(PREFIX)
SHORT = "안녕하세요. 음성 인식 서버입니다."


@pytest.fixture
async def waiting_gateways(running: Cluster) -> AsyncIterator[tuple[int, int]]:
    """Two gateways that let a session wait for a slot: with and without messages."""
    base = dict(
        redis_url=running.redis_url,
        prefix=PREFIX,
        host="127.0.0.1",
        port=0,
        claim_timeout=10 * UNIT,
        admission_wait=60 * UNIT,
    )
    async with AsyncExitStack() as stack:
        _, with_port = await stack.enter_async_context(
            serve(GatewaySettings(**base, queue_messages=True))  # type: ignore[arg-type]
        )
        _, default_port = await stack.enter_async_context(
            serve(GatewaySettings(**base))  # type: ignore[arg-type]
        )
        yield with_port, default_port


async def collect(ws: websockets.ClientConnection, into: list[dict[str, Any]]) -> None:
    async for raw in ws:
        into.append(json.loads(raw))


async def test_queue_position_messages(
    running: Cluster, waiting_gateways: tuple[int, int], espeak_wav
) -> None:
    with_port, default_port = waiting_gateways
    wav = espeak_wav(SHORT).read_bytes()
    redis = running.gateway.redis
    async with AsyncExitStack() as stack:
        # Both slots of the cluster taken by sessions that stay open.
        holders = [
            await stack.enter_async_context(websockets.connect(speech_url(running.ws)))
            for _ in range(2)
        ]
        for ws in holders:
            await ws.send(wav[:32000])
        async with asyncio.timeout(20 * UNIT):
            while sum(w.slots_free for w in await cluster.workers(redis, KEYS)) > 0:
                await asyncio.sleep(0.05)

        # A waits with queue messages, then B without; both send everything at once.
        told: list[dict[str, Any]] = []
        silent: list[dict[str, Any]] = []
        a = await stack.enter_async_context(
            websockets.connect(speech_url(f"ws://127.0.0.1:{with_port}"))
        )
        a_reader = asyncio.create_task(collect(a, told))
        async with asyncio.timeout(20 * UNIT):
            while not told:
                await asyncio.sleep(0.05)
        b = await stack.enter_async_context(
            websockets.connect(speech_url(f"ws://127.0.0.1:{default_port}"))
        )
        b_reader = asyncio.create_task(collect(b, silent))
        for ws in (a, b):
            await ws.send(wav)
            await ws.send("EOS")
        # Both wait for a slot now; A has been told its place, so B would have been by
        # the next report (sent at once, then on change, at most every interval).
        async with asyncio.timeout(20 * UNIT):
            while sum(s.state == "queued" for s in await cluster.sessions(redis, KEYS)) < 2:
                await asyncio.sleep(0.05)
        await asyncio.sleep(2 * QUEUE_REPORT_INTERVAL_S * UNIT)
        assert not silent, "no queue messages by default"

        # Free the slots: A goes first, then B; both are decoded in full.
        for ws in holders:
            await ws.send(wav[32000:])
            await ws.send("EOS")
        async with asyncio.timeout(60 * UNIT):
            await asyncio.gather(a_reader, b_reader)

    assert told[0] == {"status": 0, "id": told[0]["id"], "queue": {"position": 1}}
    queue = [m for m in told if "queue" in m]
    results = [m for m in told if "result" in m]
    assert told[: len(queue)] == queue, "position messages only before the first result"
    assert all(m["queue"]["position"] >= 1 for m in queue)
    assert results and results[-1]["result"]["final"]
    assert all("queue" not in m for m in silent)
    assert [m["status"] for m in silent] == [0] * len(silent) and silent[-1]["result"]["final"]
    text = " ".join(
        m["result"]["hypotheses"][0]["transcript"] for m in results if m["result"]["final"]
    )
    text_b = " ".join(
        m["result"]["hypotheses"][0]["transcript"] for m in silent if m["result"]["final"]
    )
    assert text == text_b, "waiting changes nothing in the result"
