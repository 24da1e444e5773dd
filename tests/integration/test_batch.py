"""Batch jobs: ``POST /v1/transcriptions`` over real HTTP, a real ``ksc batch-worker``
process (rq) and the real decoder workers of the shared cluster.

The cluster has two workers with one slot each and the batch worker keeps one slot
for live sessions (``--reserve-slots 1``), so a job runs only while both are free.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from rq.callbacks import Callback
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from gateway.app import serve
from gateway.audio import AudioInput
from harness.cluster import KSC, Cluster, stop
from harness.env import REPO, UNIT
from harness.media import CODECS, encode, pcm_of
from ksc.client import speech_url, stream
from shared import config, jobs
from shared.cluster import free_slots
from shared.config import GatewaySettings
from shared.keys import Keys
from tests.integration.conftest import PREFIX

API = "/v1/transcriptions"
QUEUE = f"{PREFIX}-batch"


@pytest.fixture(scope="module")
def batch_worker(redis_server: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [
            *KSC,
            "batch-worker",
            "--redis-url",
            f"{redis_server}/0",
            "--prefix",
            PREFIX,
            "--log-level",
            "warning",
            "--reserve-slots",
            "1",
        ]
    )
    yield proc
    stop(proc)


@pytest.fixture(scope="module")
def clip(testdata: Path) -> Path:
    """A real recording (espeak-ng speech decodes too unstably to compare texts)."""
    return sorted((testdata / "clips").glob("*.wav"))[0]


@pytest.fixture
async def cluster(running: Cluster, batch_worker: subprocess.Popen[bytes]) -> Cluster:
    assert batch_worker.poll() is None, "batch worker died"
    return running


async def _submit(
    http: aiohttp.ClientSession, base: str, data: Any, **kwargs: Any
) -> tuple[int, dict[str, Any], str]:
    async with http.post(f"{base}{API}", data=data, **kwargs) as resp:
        return resp.status, await resp.json(), resp.headers.get("Location", "")


async def _wait(
    http: aiohttp.ClientSession, base: str, job_id: str, until: tuple[str, ...]
) -> dict[str, Any]:
    """Poll the job until its state (or ``started`` phase) is one of ``until``."""
    async with asyncio.timeout(120 * UNIT):
        while True:
            async with http.get(f"{base}{API}/{job_id}") as resp:
                assert resp.status == 200
                doc: dict[str, Any] = await resp.json()
            if doc["state"] in until or doc.get("phase") in until:
                return doc
            await asyncio.sleep(0.2)


async def _normalised(data: bytes) -> bytes:
    """The PCM the gateway makes of ``data`` (what the decoder is fed)."""
    audio = AudioInput("", 16000)
    try:
        return await audio.push(data) + await audio.flush()
    finally:
        await audio.aclose()


async def _run(*argv: str) -> tuple[int, str, str]:
    """A real process, without blocking the event loop the gateway runs in."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(120 * UNIT):
        out, err = await proc.communicate()
    return int(proc.returncode or 0), out.decode(), err.decode()


async def test_wav_and_ogg_jobs_give_the_reference_transcript(
    cluster: Cluster, clip: Path, reference_decode: Any
) -> None:
    wav = clip.read_bytes()
    ogg = encode(pcm_of(clip), 16000, CODECS["ogg-opus"])
    expected = {
        "wav": reference_decode(pcm_of(clip)),
        "ogg": reference_decode(await _normalised(ogg)),
    }
    async with aiohttp.ClientSession() as http:
        # WAV as the raw body; OGG as a form's ``file`` field.
        code, wav_reply, location = await _submit(http, cluster.http, wav)
        assert code == 202 and wav_reply["state"] == "queued"
        assert location == f"{API}/{wav_reply['id']}" == wav_reply["location"]
        form = aiohttp.FormData()
        form.add_field("file", ogg, filename="clip.ogg", content_type="audio/ogg")
        code, ogg_reply, _ = await _submit(http, cluster.http, form)
        assert code == 202
        # The queue is there for rq's own CLI.
        rc, out, err = await _run(
            str(Path(sys.executable).parent / "rq"), "info", "--url", cluster.redis_url, QUEUE
        )
        assert rc == 0, err
        assert QUEUE in out
        docs = {
            name: await _wait(http, cluster.http, reply["id"], ("finished", "failed"))
            for name, reply in (("wav", wav_reply), ("ogg", ogg_reply))
        }
    for name, doc in docs.items():
        assert doc["state"] == "finished", doc
        print(f"{name}: {doc['duration']:.2f} s of audio, session {doc['decode_seconds']:.2f} s")
        finals = expected[name]
        assert finals, "the reference decode found no speech"
        assert doc["text"] == " ".join(f.text for f in finals)
        assert [s["text"] for s in doc["segments"]] == [f.text for f in finals]
        for seg, final in zip(doc["segments"], finals, strict=True):
            assert seg["start"] == pytest.approx(final.start, abs=0.011)
            assert seg["length"] == pytest.approx(final.length, abs=0.011)
            assert isinstance(seg["likelihood"], float)
            assert [w["word"] for w in seg["words"]] == seg["text"].split()
        assert doc["model"] == "ko" and doc["created"] and doc["ended"]
    assert docs["ogg"]["filename"] == "clip.ogg" and docs["ogg"]["audio"] == "ogg"
    assert docs["wav"]["audio"] == "wav"
    # The upload is not kept once the job has ended.
    assert await cluster.gateway.redis.exists(f"{PREFIX}:batch:{wav_reply['id']}:audio") == 0


async def test_bad_uploads_and_unknown_ids(cluster: Cluster, redis_server: str) -> None:
    async with aiohttp.ClientSession() as http:
        code, reply, _ = await _submit(http, cluster.http, b"this is not audio at all")
        assert code == 415 and "Unsupported audio" in reply["message"]
        code, reply, _ = await _submit(http, cluster.http, b"")
        assert code == 400 and "Empty upload" in reply["message"]
        code, reply, _ = await _submit(
            http, cluster.http, b"OggS" + bytes(64), params={"model": "xx"}
        )
        assert code == 400 and reply["status"] == 8 and "Unknown model" in reply["message"]
        async with http.get(f"{cluster.http}{API}/0123456789abcdef") as resp:
            assert resp.status == 404
            assert "No transcription job" in (await resp.json())["message"]
        async with http.get(f"{cluster.http}{API}/..%2Fetc") as resp:
            assert resp.status == 404
        # Looks like OGG, is not: accepted, then the job fails with the session's message.
        code, reply, _ = await _submit(http, cluster.http, b"OggS" + bytes(range(256)) * 64)
        assert code == 202
        doc = await _wait(http, cluster.http, reply["id"], ("finished", "failed"))
        assert doc["state"] == "failed" and doc["status"] == 5
        assert "Undecodable OGG audio" in doc["message"]

    # Over the size limit: 413 whether the length is declared, chunked or in a form.
    settings = GatewaySettings(
        redis_url=f"{redis_server}/0", prefix=PREFIX, host="127.0.0.1", port=0, batch_max_bytes=1000
    )
    async with serve(settings) as (_, port), aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{port}"

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"RIFF" + bytes(500)

        form = aiohttp.FormData()
        form.add_field("file", b"RIFF" + bytes(2000), filename="big.wav")
        for body in (b"RIFF" + bytes(2000), chunked(), form):
            code, reply, _ = await _submit(http, base, body)
            assert code == 413 and "larger than 1000 bytes" in reply["message"]


async def test_batch_leaves_the_reserve_slot_to_live_sessions(cluster: Cluster, clip: Path) -> None:
    pcm = pcm_of(clip)
    caps = "audio/x-raw, rate=(int)16000, format=(string)S16LE, channels=(int)1"
    async with (
        websockets.connect(speech_url(cluster.ws, caps)) as first,
        aiohttp.ClientSession() as http,
    ):
        await first.send(pcm[:32000])  # one live session holds a slot, no EOS yet
        async with asyncio.timeout(30 * UNIT):
            while await free_slots(cluster.gateway.redis, Keys(PREFIX), "ko") > 1:
                await asyncio.sleep(0.05)
        code, reply, _ = await _submit(http, cluster.http, clip.read_bytes())
        assert code == 202
        doc = await _wait(http, cluster.http, reply["id"], ("waiting",))
        assert doc["state"] == "started"
        # The one free slot stays free for a live client.
        second = await stream(speech_url(cluster.ws, caps), pcm, realtime=False)
        assert second.status == 0 and second.text
        async with http.get(f"{cluster.http}{API}/{reply['id']}") as resp:
            assert (await resp.json())["phase"] == "waiting"
        await first.send(pcm[32000:])
        await first.send("EOS")
        async for _ in first:
            pass
        doc = await _wait(http, cluster.http, reply["id"], ("finished", "failed"))
    assert doc["state"] == "finished" and doc["text"] == second.text


async def test_ksc_transcribe_batch_writes_srt_and_status_counts_jobs(
    cluster: Cluster, clip: Path, tmp_path: Path, reference_decode: Any
) -> None:
    out = tmp_path / "clip.srt"
    rc, _, err = await _run(
        *KSC,
        "transcribe",
        "--batch",
        "--url",
        cluster.ws,
        "--format",
        "srt",
        "-o",
        str(out),
        str(clip),
    )
    assert rc == 0, err
    finals = reference_decode(pcm_of(clip))
    cues = out.read_text(encoding="utf-8").strip().split("\n\n")
    # Cues are cut for reading (ksc/subtitles.py): every word of the finals, in order.
    words = [w for c in cues for line in c.splitlines()[2:] for w in line.split()]
    assert words == [w for f in finals for w in f.text.split()]
    assert all(" --> " in c.splitlines()[1] for c in cues)

    where = ["--redis-url", cluster.redis_url, "--prefix", PREFIX]
    rc, out_json, err = await _run(*KSC, "status", *where, "--json")
    assert rc == 0, err
    jobs = json.loads(out_json)["batch"]
    assert set(jobs) == {"queued", "started", "finished", "failed"} and jobs["finished"] >= 1
    rc, table, err = await _run(*KSC, "status", *where)
    assert rc == 0, err
    assert f"finished {jobs['finished']}" in table and f"rq info --url REDIS_URL {QUEUE}" in table
    async with aiohttp.ClientSession() as http, http.get(f"{cluster.http}/status") as resp:
        assert (await resp.json())["batch"]["finished"] == jobs["finished"]


def test_batch_worker_settings_are_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for flag, env, default, help_text in config.table(config.BatchWorkerSettings):
        assert f"| `{flag}` | `{env}` | `{default}` | {help_text} |" in readme


async def test_a_job_queued_under_the_old_function_name_still_runs(
    cluster: Cluster, clip: Path
) -> None:
    """Jobs a 0.1 gateway queued name ``shared.batch.transcribe_job``; a 0.2 batch
    worker still runs them (kept for one release)."""
    keys = Keys(PREFIX)
    job_id = uuid.uuid4().hex
    request = jobs.JobRequest(model="ko", content_type="", audio_key=keys.batch_audio(job_id))
    await cluster.gateway.redis.set(request.audio_key, clip.read_bytes())
    connection = jobs.connect_sync(cluster.redis_url)
    try:
        jobs.queue(connection, keys).enqueue(
            "shared.batch.transcribe_job", kwargs={"request": request.__dict__}, job_id=job_id
        )
    finally:
        connection.close()
    async with aiohttp.ClientSession() as http:
        doc = await _wait(http, cluster.http, job_id, ("finished", "failed"))
    assert doc["state"] == "finished", doc
    assert doc["text"] and doc["segments"]


#: A module that records being imported and being called (see the test below).
_CANARY = """
import pathlib
pathlib.Path({imported!r}).touch()


def run(*args, **kwargs):
    pathlib.Path({called!r}).touch()
"""


def test_a_job_naming_another_function_fails_and_nothing_is_imported_or_run(
    redis_server: str, tmp_path: Path
) -> None:
    """rq imports and calls whatever function a job names; the batch worker runs only
    its own job function. Jobs written straight into Redis with rq's API, as anyone
    with write access could, name ``subprocess.getoutput``, a module of their own, and
    the real job function with callbacks: all fail with a message, nothing runs."""
    url, keys = f"{redis_server}/0", Keys("foreign")  # a queue of its own
    ran, imported, called = tmp_path / "ran", tmp_path / "imported", tmp_path / "called"
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "ksc_canary.py").write_text(
        _CANARY.format(imported=str(imported), called=str(called)), encoding="utf-8"
    )
    path = [str(modules), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    connection = jobs.connect_sync(url)
    try:
        queue = jobs.queue(connection, keys)
        shell = queue.enqueue("subprocess.getoutput", args=(f"touch {ran}",))
        canary = queue.enqueue("ksc_canary.run", args=("x",))
        request = jobs.JobRequest(model="ko", content_type="", audio_key=keys.batch_audio("x"))
        hooked = queue.enqueue(
            jobs.JOB_FUNCTION,
            kwargs={"request": request.__dict__},
            on_success=Callback("ksc_canary.run"),
            on_failure=Callback("ksc_canary.run"),
        )
        # What plain rq would run: the function itself, imported by the name in Redis.
        plain = Job.fetch(shell.id, connection=connection, serializer=JSONSerializer)
        assert plain.func is subprocess.getoutput
        worker = subprocess.Popen(
            [*KSC, "batch-worker", "--redis-url", url, "--prefix", keys.prefix],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
        )
        try:
            deadline = time.monotonic() + 60 * UNIT
            while not all(
                j.get_status(refresh=True) in (JobStatus.FINISHED, JobStatus.FAILED)
                for j in (shell, canary, hooked)
            ):
                assert worker.poll() is None, "batch worker died"
                assert time.monotonic() < deadline, "the jobs did not end in time"
                time.sleep(0.1)
        finally:
            stop(worker)
        assert not ran.exists(), "subprocess.getoutput ran"
        assert not imported.exists(), "a module a job named was imported"
        assert not called.exists(), "a function a job named was called"
        messages = {}
        for name, job in (("shell", shell), ("canary", canary), ("hooked", hooked)):
            doc = jobs.describe(job)
            assert doc["state"] == "failed", doc
            messages[name] = doc["message"]
    finally:
        connection.close()
    refused = "names function 'subprocess.getoutput', which the batch worker does not run"
    allowed = "it runs only batch_worker.job.transcribe_job, shared.batch.transcribe_job"
    assert refused in messages["shell"] and allowed in messages["shell"]
    assert "names function 'ksc_canary.run'" in messages["canary"]
    assert "names callback(s) 'ksc_canary.run', 'ksc_canary.run'" in messages["hooked"]
