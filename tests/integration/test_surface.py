"""The gateway's surface against the real cluster: every bound and check of
``docs/security.md`` that is not a session limit, tried with real clients.

Batch work per key, status sockets (one poller, a cap, closed at the token's expiry),
``/status`` and ``/readyz`` (auth, cost, their own connection pool, no Redis error
text), log lines a path cannot forge, the Origin and Host checks, and references per
key. Gateways run in the test's event loop on the shared cluster's Redis and workers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
import yarl
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.app import serve
from gateway.auth import ANONYMOUS, make_token
from harness.cluster import KSC, Cluster
from harness.env import UNIT
from ksc.client import speech_url, stream
from shared import jobs, records
from shared.cluster import MAX_SESSIONS_LISTED
from shared.config import GatewaySettings
from shared.keys import Keys
from shared.wire import SessionRequest
from tests.integration.conftest import PREFIX

KEYS = Keys(PREFIX)
ALICE = "alice-surface-0123456789abcdef"
BOB = "bob-surface-0123456789abcdef00"
SECRET = "surface-secret-0123456789abcdefghij"
SHORT = "안녕하세요. 음성 인식 서버입니다."
BATCH = "/v1/transcriptions"
REFERENCE = "/client/dynamic/reference"
EVIL = "http://evil.example"


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.write_text(f"{ALICE} alice\n{BOB} bob\n")
    return path


@asynccontextmanager
async def gateway(running: Cluster, **settings: Any) -> AsyncIterator[Cluster]:
    """Another gateway replica on the shared cluster, with ``settings``."""
    base: dict[str, Any] = {
        "redis_url": running.redis_url,
        "prefix": PREFIX,
        "host": "127.0.0.1",
        "port": 0,
        "claim_timeout": 10 * UNIT,
    }
    async with serve(GatewaySettings(**{**base, **settings})) as (gw, port):
        yield Cluster(settings.get("redis_url", running.redis_url), gw, port, running.workers)


async def submit(
    http: aiohttp.ClientSession, base: str, data: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    async with http.post(f"{base}{BATCH}", data=data, headers=headers or {}) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After", "")


async def forget_jobs(cluster: Cluster, job_ids: list[str], *names: str) -> None:
    """Remove the jobs a test left queued, their uploads and the keys' counts."""
    connection = jobs.connect_sync(cluster.redis_url)
    try:
        for job_id in job_ids:
            job = jobs.fetch(connection, job_id)
            if job is not None:
                await asyncio.to_thread(job.delete)
    finally:
        connection.close()
    redis = cluster.gateway.redis
    for job_id in job_ids:
        await redis.delete(KEYS.batch_audio(job_id))
    for name in names:
        await redis.delete(KEYS.key_batch(name))


async def wait_job(
    http: aiohttp.ClientSession, base: str, job_id: str, headers: dict[str, str]
) -> dict[str, Any]:
    async with asyncio.timeout(120 * UNIT):
        while True:
            async with http.get(f"{base}{BATCH}/{job_id}", headers=headers) as resp:
                doc: dict[str, Any] = await resp.json()
            if doc.get("state") in ("finished", "failed"):
                return doc
            await asyncio.sleep(0.2)


# --- batch work per key ----------------------------------------------------------------


async def test_batch_jobs_per_key_are_bounded_across_replicas_and_given_back(
    running: Cluster, keys_file: Path, espeak_wav: Any, redis_server: str
) -> None:
    wav = espeak_wav(SHORT).read_bytes()
    redis = running.gateway.redis
    await redis.delete(KEYS.key_batch("alice"), KEYS.key_batch("bob"))
    alice, bob = {"X-API-Key": ALICE}, {"X-API-Key": BOB}
    submitted: dict[str, dict[str, str]] = {}  # job id -> its key
    settings = {"api_keys": str(keys_file), "batch_key_max_jobs": 2}
    try:
        async with (
            gateway(running, **settings) as a,
            gateway(running, **settings) as b,
            aiohttp.ClientSession() as http,
        ):
            for replica in (a, b):  # one job through each replica: counted in Redis
                code, reply, _ = await submit(http, replica.http, wav, alice)
                assert code == 202, reply
                submitted[reply["id"]] = alice
            code, reply, retry = await submit(http, a.http, wav, alice)
            assert code == 429 and reply["status"] == 6 and int(retry) > 0
            assert "'alice' has 2 batch jobs pending" in reply["message"]
            code, reply, _ = await submit(http, b.http, wav, bob)  # another key: its own
            assert code == 202, reply
            submitted[reply["id"]] = bob

            # The jobs end (a real batch worker runs them): alice's places come back.
            worker = await asyncio.create_subprocess_exec(
                *KSC, "batch-worker", "--redis-url", f"{redis_server}/0", "--prefix", PREFIX,
                "--log-level", "warning", "--reserve-slots", "1",
            )  # fmt: skip
            try:
                for job_id, key in submitted.items():
                    doc = await wait_job(http, a.http, job_id, key)
                    assert doc["state"] == "finished", doc
            finally:
                worker.terminate()  # it drains, then exits
                try:
                    await asyncio.wait_for(worker.wait(), 30 * UNIT)
                except TimeoutError:
                    worker.kill()
                    await worker.wait()
            code, reply, _ = await submit(http, b.http, wav, alice)
            assert code == 202, reply
            submitted[reply["id"]] = alice
            assert await redis.zcard(KEYS.key_batch("alice")) == 1
    finally:
        await forget_jobs(running, list(submitted), "alice", "bob")


async def test_batch_bytes_with_auth_off_count_every_client_together(
    running: Cluster, espeak_wav: Any
) -> None:
    wav = espeak_wav(SHORT).read_bytes()
    redis = running.gateway.redis
    await redis.delete(KEYS.key_batch(ANONYMOUS))
    before = {k async for k in redis.scan_iter(match=f"{PREFIX}:batch:*:audio")}
    submitted: list[str] = []
    try:
        async with (
            gateway(running, batch_key_max_bytes=len(wav) * 3 // 2, batch_key_max_jobs=0) as gw,
            aiohttp.ClientSession() as http,
        ):
            code, reply, _ = await submit(http, gw.http, wav)
            assert code == 202, reply
            submitted.append(reply["id"])

            async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: read, then refused
                yield wav

            for body in (wav, chunked()):
                code, reply, retry = await submit(http, gw.http, body)
                assert code == 429 and reply["status"] == 6 and int(retry) > 0
                assert (
                    f"'{ANONYMOUS}' has {len(wav)} bytes of batch uploads pending"
                    in (reply["message"])
                )
        after = {k async for k in redis.scan_iter(match=f"{PREFIX}:batch:*:audio")}
        assert after - before == {KEYS.batch_audio(submitted[0]).encode()}, "refused: not kept"
        assert await redis.ttl(KEYS.key_batch(ANONYMOUS)) > 0
    finally:
        await forget_jobs(running, submitted, ANONYMOUS)


# --- status sockets --------------------------------------------------------------------


async def test_status_sockets_share_one_poller(running: Cluster) -> None:
    feed = running.gateway.view.feed
    count = 40
    async with AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(websockets.connect(f"{running.ws}/client/ws/status"))
            for _ in range(count)
        ]
        async with asyncio.timeout(10 * UNIT):
            firsts = [json.loads(await ws.recv()) for ws in sockets]
        assert len(feed.sockets) == count
        polls = feed.polls
        await running.gateway.redis.hincrby(KEYS.stats, "requests_processed", 1)
        expected = max(f["num_requests_processed"] for f in firsts) + 1
        async with asyncio.timeout(10 * UNIT):
            for ws in sockets:
                while json.loads(await ws.recv())["num_requests_processed"] < expected:
                    pass
        # One socket polling on its own would need a poll of its own to see the change:
        # forty of them, at least forty polls. One poller for all needs one.
        assert feed.polls - polls < count
    async with asyncio.timeout(10 * UNIT):
        while feed.sockets:
            await asyncio.sleep(0.05)


async def test_status_sockets_per_gateway_are_capped(running: Cluster) -> None:
    async with gateway(running, status_max_sockets=2) as gw:
        url = f"{gw.ws}/client/ws/status"
        first = await websockets.connect(url)
        async with websockets.connect(url) as second:
            await second.recv()
            with pytest.raises(InvalidStatus) as refused:
                async with websockets.connect(url):
                    pass
            assert refused.value.response.status_code == 503
            assert int(refused.value.response.headers["Retry-After"]) > 0
            await first.close()
            async with asyncio.timeout(10 * UNIT):
                while len(gw.gateway.view.feed.sockets) > 1:
                    await asyncio.sleep(0.05)
            async with websockets.connect(url) as again:  # a place came back
                assert json.loads(await again.recv())["num_workers_available"] >= 0


async def test_status_socket_closes_at_token_expiry_speech_may_finish(
    running: Cluster, espeak_wav: Any
) -> None:
    async with gateway(running, token_secret=SECRET) as gw:
        token = make_token(SECRET, "carol", 3)
        async with websockets.connect(f"{gw.ws}/client/ws/status?token={token}") as ws:
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(30 * UNIT):
                    while True:
                        await ws.recv()
        assert ws.close_code == 1008 and ws.close_reason == "token expired"
        # A speech session opened just before its token expires is not cut off.
        wav = espeak_wav(SHORT).read_bytes()
        short_lived = make_token(SECRET, "carol", 1)
        result = await stream(speech_url(gw.ws, token=short_lived), wav, realtime=True)
        assert result.status == 0 and result.text and result.close_code == 1000


# --- /status and /readyz ---------------------------------------------------------------


async def test_status_needs_a_key_probes_do_not(running: Cluster, keys_file: Path) -> None:
    async with gateway(running, api_keys=str(keys_file)) as gw, aiohttp.ClientSession() as http:
        async with http.get(f"{gw.http}/status") as resp:
            assert resp.status == 401
        async with http.get(f"{gw.http}/status", headers={"X-API-Key": ALICE}) as resp:
            assert resp.status == 200
            assert len((await resp.json())["workers"]) == 2
        for path in ("/healthz", "/readyz", "/metrics"):
            async with http.get(f"{gw.http}{path}") as resp:
                assert resp.status == 200, path
        # `ksc status --url` as an operator runs it against such a gateway
        for key, code in (("", 1), (ALICE, 0)):
            done = await asyncio.create_subprocess_exec(
                *KSC,
                "status",
                "--url",
                gw.http,
                "--api-key",
                key,
                "--json",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await done.communicate()
            assert done.returncode == code, err.decode()
            if code == 0:
                assert len(json.loads(out)["workers"]) == 2
            else:
                assert b"401" in err and b"Traceback" not in err


async def test_status_lists_a_bounded_number_of_sessions(redis_server: str) -> None:
    prefix = f"surface-{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    url = f"{redis_server}/0"
    redis = Redis.from_url(url)
    try:
        now = time.time()
        stale = [f"stale-{i}" for i in range(5)]
        await redis.zadd(keys.live, {sid: now - 100 for sid in stale})  # records gone
        for i in range(MAX_SESSIONS_LISTED + 50):
            request = SessionRequest(sid=f"s{i:04d}", model="ko", created=now + i)
            await records.create(redis, keys, request, 16000)
        settings = GatewaySettings(redis_url=url, prefix=prefix, host="127.0.0.1", port=0)
        async with serve(settings) as (_, port), aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/status") as resp:
                snap = await resp.json()
        assert len(snap["sessions"]) == MAX_SESSIONS_LISTED - len(stale)
        assert snap["sessions_total"] == MAX_SESSIONS_LISTED + 50
        assert snap["sessions"][0]["id"] == "s0000" and snap["sessions"][0]["state"] == "queued"
        assert [await redis.zscore(keys.live, sid) for sid in stale] == [None] * len(stale)
    finally:
        await redis.delete(keys.live, *[keys.meta(f"s{i:04d}") for i in range(250)])
        await redis.aclose()


async def test_concurrent_status_requests_share_one_read(running: Cluster) -> None:
    snapshot = running.gateway.view.snapshot
    before = snapshot.computations
    requests = 50
    async with aiohttp.ClientSession() as http:

        async def get() -> int:
            async with http.get(f"{running.http}/status") as resp:
                await resp.read()
                return resp.status

        codes = await asyncio.gather(*(get() for _ in range(requests)))
    assert codes == [200] * requests
    assert snapshot.computations - before < requests


async def test_status_and_readiness_do_not_wait_for_the_audio_pool(running: Cluster) -> None:
    """The sessions' pool all taken (here by blocking reads): status still answers."""
    name = f"surface-{uuid.uuid4().hex[:8]}"
    url = f"{running.redis_url}?max_connections=4&client_name={name}"
    admin = running.gateway.redis
    async with gateway(running, redis_url=url) as gw:
        audio = gw.gateway.redis
        blockers = [  # more than the pool has: no connection of it is ever idle again
            asyncio.create_task(audio.blpop([f"{PREFIX}:surface:never"], timeout=0))
            for _ in range(6)
        ]
        try:
            async with asyncio.timeout(10 * UNIT):
                while sum(c.get("name") == name for c in await admin.client_list()) < 4:
                    await asyncio.sleep(0.05)
            with pytest.raises(TimeoutError):  # a command on the sessions' pool waits
                async with asyncio.timeout(0.5 * UNIT):
                    await audio.ping()
            async with aiohttp.ClientSession() as http, asyncio.timeout(10 * UNIT):
                for path in ("/readyz", "/status"):
                    async with http.get(f"{gw.http}{path}") as resp:
                        assert resp.status == 200, path
        finally:
            for task in blockers:
                task.cancel()
            await asyncio.gather(*blockers, return_exceptions=True)


async def test_readiness_shows_no_redis_error_text(
    running: Cluster, redis_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis user without the rights the readiness read needs: a real Redis error."""
    admin = running.gateway.redis
    user, password = f"surface-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await admin.execute_command(
        "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-@sortedset", "-@hash"
    )
    host_port = redis_server.split("://", 1)[1]
    try:
        url = f"redis://{user}:{password}@{host_port}/0"
        with caplog.at_level(logging.WARNING, logger="gateway.app"):
            async with gateway(running, redis_url=url) as gw, aiohttp.ClientSession() as http:
                async with http.get(f"{gw.http}/readyz") as resp:
                    assert resp.status == 503
                    text = await resp.text()
                async with http.get(f"{gw.http}/status", headers={}) as resp:
                    assert resp.status == 503
                    status_text = await resp.text()
        assert json.loads(text) == {"ready": False, "reason": "redis unavailable"}
        assert json.loads(status_text) == {"error": "redis unavailable"}
        logged = " ".join(r.getMessage() for r in caplog.records)
        assert "permission" in logged.lower()  # the detail is in the log
    finally:
        await admin.execute_command("ACL", "DELUSER", user)


# --- log lines -------------------------------------------------------------------------


async def test_a_path_cannot_forge_a_log_line(
    running: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    forged = "/client/x%0A2026-01-01 INFO gateway.app forged%0D%1B[2J"
    with caplog.at_level(logging.INFO):
        async with aiohttp.ClientSession() as http:
            url = yarl.URL(f"{running.http}{forged.replace(' ', '%20')}", encoded=True)
            async with http.get(url) as resp:
                assert resp.status == 404
            async with http.get(url, headers={"Origin": EVIL}) as resp:
                assert resp.status == 403  # refused and logged by the Origin check
    lines = [r.getMessage() for r in caplog.records if "forged" in r.getMessage()]
    assert len(lines) >= 2, lines
    for line in lines:
        assert "\n" not in line and "\r" not in line and "\x1b" not in line
        assert "/client/x\\x0a2026-01-01 INFO gateway.app forged\\x0d\\x1b[2J" in line


# --- Origin and Host -------------------------------------------------------------------


async def ws_status(url: str, **kwargs: Any) -> int:
    """The HTTP status of a refused websocket upgrade (101 when it was accepted)."""
    try:
        async with websockets.connect(url, **kwargs) as ws:
            await ws.send("EOS")
            return 101
    except InvalidStatus as exc:
        return int(exc.response.status_code)


async def test_foreign_pages_are_refused_by_default(running: Cluster) -> None:
    """The default gateway (auth off, ``cors_origins`` ``*``)."""
    own = f"http://127.0.0.1:{running.port}"
    for path in ("/client/ws/speech", "/client/ws/status", "/", "/vosk"):
        assert await ws_status(f"{running.ws}{path}", origin=EVIL) == 403, path
    assert await ws_status(speech_url(running.ws), origin=own) == 101  # the page's own
    assert await ws_status(speech_url(running.ws)) == 101  # not a browser
    cid = f"csrf-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as http:
        plain = {"Content-Id": cid, "Content-Type": "text/plain"}  # a "simple request"
        for headers in ({"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}):
            async with http.post(
                f"{running.http}{REFERENCE}", data=b"x", headers={**plain, **headers}
            ) as resp:
                assert resp.status == 403
                assert (await resp.json())["message"] == "Origin not allowed"
        async with http.get(f"{running.http}{REFERENCE}", params={"content-id": cid}) as resp:
            assert resp.status == 404, "nothing was stored"
        for method, path in (("POST", BATCH), ("PUT", "/client/dynamic/recognize")):
            async with http.request(
                method, f"{running.http}{path}", data=b"RIFF", headers={"Origin": EVIL}
            ) as resp:
                assert resp.status == 403, path
        # The browser page's own requests pass.
        async with http.post(
            f"{running.http}{REFERENCE}", data=b"x", headers={**plain, "Origin": own}
        ) as resp:
            assert resp.status == 200


async def test_allowed_origins_let_a_named_page_in(running: Cluster) -> None:
    async with gateway(running, allowed_origins=EVIL) as gw, aiohttp.ClientSession() as http:
        assert await ws_status(speech_url(gw.ws), origin=EVIL) == 101
        assert await ws_status(speech_url(gw.ws), origin="http://other.example") == 403
        headers = {"Origin": EVIL, "Content-Id": f"ok-{uuid.uuid4().hex[:8]}"}
        async with http.post(f"{gw.http}{REFERENCE}", data=b"x", headers=headers) as resp:
            assert resp.status == 200


async def test_host_check_against_dns_rebinding(running: Cluster) -> None:
    rebound = f"rebound.example:{running.port}"
    browser = {"Host": rebound, "Sec-Fetch-Site": "same-origin"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{running.http}/status", headers=browser) as resp:
            assert resp.status == 421
            assert "--allowed-hosts" in (await resp.json())["message"]
        # The rebinding page's websocket: Origin and Host agree, and are refused.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(
                f"{running.ws}/client/ws/speech",
                headers={"Host": rebound, "Origin": f"http://{rebound}"},
            )
        assert refused.value.status == 421
        async with http.get(f"{running.http}/status", headers={"Host": rebound}) as resp:
            assert resp.status == 200  # not a browser: a service name is fine
        async with http.get(f"{running.http}/status", headers={"Sec-Fetch-Site": "none"}) as resp:
            assert resp.status == 200  # a browser, by address
    async with gateway(running, allowed_hosts="asr.example") as gw, aiohttp.ClientSession() as http:
        named = {"Host": f"asr.example:{gw.port}", "Sec-Fetch-Site": "same-origin"}
        async with http.get(f"{gw.http}/status", headers=named) as resp:
            assert resp.status == 200
        async with http.get(f"{gw.http}/status", headers={"Host": "other.example"}) as resp:
            assert resp.status == 421  # set: every client
        async with http.get(f"{gw.http}/healthz", headers={"Host": "other.example"}) as resp:
            assert resp.status == 200  # probes are asked for by address


# --- references ------------------------------------------------------------------------


async def test_references_belong_to_a_key_and_are_bounded(
    running: Cluster, keys_file: Path
) -> None:
    redis = running.gateway.redis
    for name in ("alice", "bob"):
        await redis.delete(KEYS.key_references(name), KEYS.key_reference_times(name))
    alice, bob = {"X-API-Key": ALICE}, {"X-API-Key": BOB}
    settings = {"api_keys": str(keys_file), "reference_max_count": 3, "reference_max_bytes": 100}
    async with gateway(running, **settings) as gw, aiohttp.ClientSession() as http:
        url = f"{gw.http}{REFERENCE}"

        async def post(cid: str, body: bytes, key: dict[str, str]) -> int:
            async with http.post(url, data=body, headers={**key, "Content-Id": cid}) as resp:
                return resp.status

        async def get(key: dict[str, str], *cids: str) -> tuple[int, Any]:
            params = [("content-id", c) for c in cids]
            async with http.get(url, params=params, headers=key) as resp:
                return resp.status, await resp.json()

        assert await post("c1", "첫 번째".encode(), alice) == 200
        assert (await get(bob, "c1"))[0] == 404  # another key's
        assert (await get(bob))[1] == {}
        code, one = await get(alice, "c1")
        assert code == 200 and one["content"] == "첫 번째"
        assert await post("big", b"x" * 101, alice) == 413
        assert await post("x" * 300, b"x", alice) == 400
        for cid in ("c2", "c3", "c4"):  # past three, the least recently written goes
            assert await post(cid, cid.encode(), alice) == 200
        assert (await get(alice, "c1"))[0] == 404
        code, some = await get(alice, "c2", "c4", "gone")
        assert code == 200 and sorted(some) == ["c2", "c4"]
        assert sorted((await get(alice))[1]) == ["c2", "c3", "c4"]
        assert 0 < await redis.ttl(KEYS.key_references("alice")) <= 30 * 86400

        # A GET reads the fields it names, never the whole hash.
        monitor = Redis.from_url(f"{running.redis_url}")
        try:
            async with monitor.monitor() as m:
                reader = asyncio.create_task(get(alice, "c2", "c3"))
                seen: list[str] = []
                async with asyncio.timeout(10 * UNIT):
                    while "HMGET" not in seen:
                        command = (await m.next_command())["command"]
                        if KEYS.key_references("alice") in command:
                            seen.append(command.split()[0].upper())
                assert (await reader)[0] == 200
        finally:
            await monitor.aclose()
        assert seen == ["HMGET"]
        # Without ids: the newest MAX_IDS_PER_GET, their number in X-Total-Count; a list
        # of them all could be a thousand 64 KiB texts.
        async with http.get(url, headers=alice) as resp:
            assert resp.status == 200 and resp.headers["X-Total-Count"] == "3"
