"""Shared fixtures: one real redis-server and one prepared model per test session.

Timeouts are multiples of :data:`harness.env.UNIT` seconds, scaled by
``KSC_TEST_TIMEOUT_SCALE`` for slow machines. Nothing here asserts wall-clock times.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import reference
from harness.cluster import LocalRedis
from harness.env import CACHE, TESTDATA


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port; yields its base URL (no database number)."""
    server = LocalRedis(tmp_path_factory.mktemp("redis"), persistent=False)
    server.start()
    yield server.base_url
    server.stop()


@pytest.fixture
async def redis(redis_server: str):  # type: ignore[no-untyped-def]
    """A client on database 1, flushed before each test (the cluster uses database 0)."""
    from redis.asyncio import Redis

    client = Redis.from_url(f"{redis_server}/1")
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def prepared_model():  # type: ignore[no-untyped-def]
    from decoder_worker.model import load_prepared, prepare_model

    return load_prepared(prepare_model(cache_dir=CACHE))


@pytest.fixture(scope="session")
def kag_engine(prepared_model):  # type: ignore[no-untyped-def]
    from decoder_worker.engine import KagEngine

    return KagEngine.load(prepared_model)


@pytest.fixture(scope="session")
def reference_decode(prepared_model):  # type: ignore[no-untyped-def]
    """Direct decoding from the state a worker's decoder process starts in
    (:mod:`harness.reference`): ``reference_decode(pcm, chunk_bytes=8000) -> list[Final]``."""
    with reference.pool(prepared_model.path) as decode:
        yield decode


@pytest.fixture(scope="session")
def testdata() -> Path:
    if not (TESTDATA / "manifest.tsv").exists():
        pytest.skip(f"real recordings not found at {TESTDATA}")
    return TESTDATA


@pytest.fixture(scope="session")
def espeak_wav(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Synthesise Korean speech with espeak-ng (deterministic for a given text).

    ``espeak_wav(text, rate=16000, channels=1, speed=140, pad=True) -> Path``; ``pad``
    adds 0.3 s of silence before and 0.6 s after, as a recording would have.
    """
    folder = tmp_path_factory.mktemp("espeak")

    def make(
        text: str, rate: int = 16000, channels: int = 1, speed: int = 140, pad: bool = True
    ) -> Path:
        tag = f"{abs(hash(text))}-{speed}"
        raw = folder / f"raw-{tag}.wav"
        if not raw.exists():
            subprocess.run(
                ["espeak-ng", "-v", "ko", "-s", str(speed), "-w", str(raw), text], check=True
            )
        out = folder / f"{tag}-{rate}-{channels}-{pad}.wav"
        effects = ["pad", "0.3", "0.6"] if pad else []
        subprocess.run(
            ["sox", str(raw), "-r", str(rate), "-c", str(channels), "-b", "16", str(out), *effects],
            check=True,
        )
        return out

    return make
