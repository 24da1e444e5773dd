"""kill -9 the worker that owns a live session: another worker finishes it.

The transcript must equal the no-fault run's, with no segment number missing or sent
twice. Each trial kills the owner at one moment of the session, then starts a new
worker in its place for the next trial.
"""

from __future__ import annotations

import time
import wave
from collections.abc import AsyncIterator

import pytest

from gateway.app import serve
from harness.cluster import stop, wait_for_workers
from harness.failover import KEYS, PREFIX, Trial, finals, run_session
from harness.speech import SENTENCES, assert_well_formed
from shared.config import GatewaySettings

RECOVERY: list[float] = []


@pytest.fixture
async def trial(redis_server: str, prepared_model: object) -> AsyncIterator[Trial]:
    t = Trial(f"{redis_server}/0")
    await t.redis.delete(KEYS.sessions("ko"))
    t.start()
    t.start()
    await wait_for_workers(t.redis, KEYS, 2)
    yield t
    stop(*t.workers.values())
    await t.redis.aclose()


@pytest.fixture(scope="module")
def speech(espeak_wav) -> bytes:  # type: ignore[no-untyped-def]
    """Three sentences (~13 s): pauses end the first two segments; the last one is still
    open at EOS, so only the end of the stream finishes it."""
    pcm = b""
    for i, text in enumerate(SENTENCES):
        with wave.open(str(espeak_wav(text, pad=False))) as w:
            pause = 0.2 if i == len(SENTENCES) - 1 else 1.5
            pcm += bytes(2 * 4800) + w.readframes(w.getnframes()) + bytes(int(2 * 16000 * pause))
    return pcm


@pytest.mark.parametrize("moment", ["mid-segment", "between-segments", "after-eos"])
async def test_kill_the_owner(trial: Trial, speech: bytes, moment: str, reference: dict) -> None:
    settings = GatewaySettings(redis_url=trial.redis_url, prefix=PREFIX, host="127.0.0.1", port=0)
    async with serve(settings) as (_gateway, port):
        if "expected" not in reference:
            clean = await run_session(port, speech)
            assert_well_formed(clean.messages)
            assert len(clean.finals) == len(SENTENCES)
            reference["expected"] = finals(clean)

        killed: list[float] = []
        after_kill: list[float] = []
        owner: list[str] = []

        async def kill_owner() -> None:
            if not killed:
                killed.append(trial.kill(owner[0] if owner else await trial.owner()))

        async def on_message(message: dict) -> None:  # type: ignore[type-arg]
            if not owner:
                owner.append(await trial.owner())
            if killed and not after_kill:
                after_kill.append(time.monotonic())
            final = message.get("result", {}).get("final")
            if moment == "between-segments" and final and message["segment"] == 0:
                await kill_owner()
            if moment == "mid-segment" and not final and message.get("segment") == 1:
                await kill_owner()

        async def on_eos() -> None:
            if moment == "after-eos":
                await kill_owner()

        result = await run_session(port, speech, on_message=on_message, on_eos=on_eos)
        if not after_kill:  # nothing but the close came after the kill
            after_kill.append(time.monotonic())
        trial.start()  # a replacement, as a supervisor would start
    assert killed, "the owner was killed"
    sid = result.messages[0]["id"]
    assert await trial.redis.hget(KEYS.meta(sid), "takeovers") == b"1", "another worker took over"
    assert_well_formed(result.messages)
    assert finals(result) == reference["expected"]
    assert result.close_code == 1000
    RECOVERY.append(after_kill[0] - killed[0] if after_kill else float("nan"))
    print(f"{moment}: first message or close {RECOVERY[-1]:.2f} s after the kill")


@pytest.fixture(scope="module")
def reference() -> dict:  # type: ignore[type-arg]
    return {}
