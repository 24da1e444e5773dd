"""Shared fixtures: one real redis-server and one prepared model per test session.

Timeouts are multiples of ``UNIT`` seconds, scaled by ``KSC_TEST_TIMEOUT_SCALE`` for
slow machines. Nothing here asserts wall-clock times.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.up import LocalRedis

UNIT = float(os.environ.get("KSC_TEST_TIMEOUT_SCALE", "1")) * 1.0
REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO.parent / "shared" / "testdata" / "ko"
CACHE = Path(os.environ.get("KSC_CACHE") or Path.home() / ".cache" / "kaldi-stream-cluster")


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


_REFERENCE: tuple[Any, Any] | None = None


def _load_reference(model_path: str) -> None:
    from decoder_worker.engine import KagEngine
    from decoder_worker.model import load_prepared

    global _REFERENCE
    model = load_prepared(Path(model_path))
    _REFERENCE = (KagEngine.load(model), model.endpoint)


def _reference_decode(pcm: bytes, chunk_bytes: int) -> Any:
    from decoder_worker.forking import ForkingEngine
    from decoder_worker.recognizer import decode_pcm

    assert _REFERENCE is not None
    engine, rules = _REFERENCE
    return decode_pcm(ForkingEngine(engine), rules, pcm, chunk_bytes)


@pytest.fixture(scope="session")
def reference_decode(prepared_model):  # type: ignore[no-untyped-def]
    """Direct in-process decoding from the state a worker's decoder process starts in.

    kaldi-active-grammar carries process-wide state from one utterance to the next (a
    second engine loaded in a process that already decoded is not pristine either), so
    the reference runs in a freshly spawned interpreter that loads the engine once,
    never decodes with it, and decodes each utterance in a fresh fork — as a worker does.
    ``reference_decode(pcm, chunk_bytes=8000) -> list[Final]``.
    """
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, initializer=_load_reference, initargs=(str(prepared_model.path),)) as pool:
        yield lambda pcm, chunk_bytes=8000: pool.apply(_reference_decode, (pcm, chunk_bytes))


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
