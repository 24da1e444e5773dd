"""Redis users (``deploy/redis/users.acl``): every role runs with its own user.

A real ``redis-server`` loads the shipped ACL file (passwords filled in, as
``docs/security.md`` says); a ``ksc gateway``, a ``ksc worker`` and a ``ksc
batch-worker`` process each connect as their own user; real speech is decoded over a
websocket and as a batch job. Redis's ACL log then shows that none of them was refused
a command, a key or a channel on the way — and each user is refused what its role does
not need.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis import Redis
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError

from harness.cluster import KSC, free_port, start_worker, stop, wait_ready
from harness.env import REPO, UNIT
from harness.media import pcm_of
from ksc.client import speech_url, stream

ACL_FILE = REPO / "deploy" / "redis" / "users.acl"
ROLES = ("admin", "gateway", "worker", "batch")
#: The prefix the ACL file is written for (the default).
PREFIX = "ksc"
CAPS = "audio/x-raw, rate=(int)16000, format=(string)S16LE, channels=(int)1"
API_KEY = "acl-test-key-0123456789abcdef"


@dataclass(frozen=True)
class AclRedis:
    port: int
    passwords: dict[str, str]

    def url(self, role: str) -> str:
        return f"redis://ksc-{role}:{self.passwords[role]}@127.0.0.1:{self.port}/0"

    def client(self, role: str) -> Redis:
        return Redis.from_url(self.url(role))


def render(text: str, passwords: dict[str, str]) -> str:
    """The ACL file with each ``<ROLE>_PASSWORD_SHA256`` placeholder filled in."""
    for role, password in passwords.items():
        placeholder = f"{role.upper()}_PASSWORD_SHA256"
        assert placeholder in text, placeholder
        text = text.replace(placeholder, hashlib.sha256(password.encode()).hexdigest())
    return text


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[AclRedis]:
    passwords = {role: secrets.token_hex(16) for role in ROLES}
    with tempfile.TemporaryDirectory(prefix="ksc-acl-") as data:
        acl = Path(data) / "users.acl"
        acl.write_text(render(ACL_FILE.read_text(encoding="utf-8"), passwords), encoding="utf-8")
        port = free_port()
        proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                data,
                "--appendonly",
                "no",
                "--save",
                "",
                "--aclfile",
                str(acl),
                "--loglevel",
                "warning",
            ]
        )
        server = AclRedis(port, passwords)
        admin = server.client("admin")
        try:
            for _ in range(int(100 * UNIT)):
                try:
                    admin.ping()
                    break
                except RedisError:
                    assert proc.poll() is None, "redis-server refused the ACL file"
                    time.sleep(0.1)
            else:
                pytest.fail("redis-server with the ACL file did not answer")
            yield server
        finally:
            admin.close()
            stop(proc)


def refusals(admin: Redis) -> list[str]:
    """What Redis refused since the last reset, one line per ACL log entry."""
    entries: list[dict[str, Any]] = admin.acl_log()
    return [f"{e['username']}: {e['reason']} {e['object']!r} ({e['context']})" for e in entries]


async def _until_ended(client: aiohttp.ClientSession, http: str, job_id: str) -> dict[str, Any]:
    async with asyncio.timeout(120 * UNIT):
        while True:
            async with client.get(f"{http}/v1/transcriptions/{job_id}") as resp:
                assert resp.status == 200, await resp.text()
                doc: dict[str, Any] = await resp.json()
            if doc["state"] in ("finished", "failed"):
                return doc
            await asyncio.sleep(0.2)


async def _submit(client: aiohttp.ClientSession, http: str, data: bytes) -> str:
    async with client.post(f"{http}/v1/transcriptions", data=data) as resp:
        assert resp.status == 202, await resp.text()
        job_id: str = (await resp.json())["id"]
        return job_id


@dataclass
class Roles:
    """A ``ksc gateway``, ``ksc worker`` and ``ksc batch-worker``, each with its own user."""

    port: int
    gateway: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    batch: subprocess.Popen[bytes]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop(self.gateway, self.batch, self.worker)


@pytest.fixture
def roles(acl_redis: AclRedis, prepared_model: object, tmp_path: Path) -> Iterator[Roles]:
    admin = acl_redis.client("admin")
    admin.acl_log_reset()
    admin.close()
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{API_KEY} acl max-sessions=2 audio-seconds=3600\n", encoding="utf-8")
    port = free_port()
    common = ["--prefix", PREFIX, "--log-level", "warning"]
    started = Roles(
        port,
        gateway=subprocess.Popen(
            [
                *KSC,
                "gateway",
                "--redis-url",
                acl_redis.url("gateway"),
                *common,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--api-keys",
                str(keys_file),
            ]
        ),
        worker=start_worker(acl_redis.url("worker"), "acl-w1", prefix=PREFIX),
        batch=subprocess.Popen(
            [
                *KSC,
                "batch-worker",
                "--redis-url",
                acl_redis.url("batch"),
                *common,
                "--reserve-slots",
                "0",
            ]
        ),
    )
    try:
        yield started
    finally:
        started.stop()


async def test_gateway_worker_and_batch_worker_run_with_their_own_users(
    acl_redis: AclRedis, roles: Roles, testdata: Path
) -> None:
    clip = sorted((testdata / "clips").glob("*.wav"))[0]
    http = roles.http
    try:
        await asyncio.to_thread(wait_ready, http, 1, 120 * UNIT)
        # A live session over the websocket, with the API key's limits counted.
        live = await stream(speech_url(roles.ws, CAPS, token=API_KEY), pcm_of(clip), realtime=False)
        async with aiohttp.ClientSession(headers={"X-API-Key": API_KEY}) as client:
            reference = f"{http}/client/dynamic/reference"
            async with client.post(reference, data="참조", headers={"Content-Id": "c1"}) as resp:
                assert resp.status == 200, await resp.text()
            async with client.get(reference) as resp:
                assert resp.status == 200 and "c1" in await resp.text()
            # A batch job that succeeds, and one whose session fails (rq's failure path).
            done = await _until_ended(client, http, await _submit(client, http, clip.read_bytes()))
            bad = b"OggS" + bytes(range(256)) * 64
            failed = await _until_ended(client, http, await _submit(client, http, bad))
            async with client.get(f"{http}/status") as resp:
                assert resp.status == 200, await resp.text()
                status = await resp.json()
        for name in ("gateway", "worker", "batch"):
            assert getattr(roles, name).poll() is None, f"the {name} died"
    finally:
        await asyncio.to_thread(roles.stop)  # their shutdown paths are checked too
        # Whatever went wrong above, a refusal is the first thing to know of.
        admin = acl_redis.client("admin")
        refused = refusals(admin)
        admin.close()
        if refused:
            pytest.fail("a role was refused what it needs:\n" + "\n".join(refused))
    assert live.status == 0 and live.text, live.messages
    assert done["state"] == "finished" and done["text"] == live.text, done
    assert failed["state"] == "failed" and failed["status"] == 5, failed
    assert status["batch"]["finished"] >= 1 and status["batch"]["failed"] >= 1


#: What each role's user must not do: (role, command), refused with NOPERM.
REFUSED = [
    *(
        (role, command)
        for role in ("gateway", "worker", "batch")
        for command in (
            ("CONFIG", "SET", "maxmemory", "1"),
            ("FLUSHALL",),
            ("KEYS", "*"),
            ("ACL", "SETUSER", f"ksc-{role}", "+@all"),
            ("SET", "elsewhere", "x"),
        )
    ),
    # Only workers write heartbeats and publish a session's events.
    ("gateway", ("HSET", "ksc:worker:forged", "slots_free", "99")),
    ("gateway", ("PUBLISH", "ksc:{sid}:events", '{"type": "final"}')),
    ("gateway", ("HGETALL", "rq:worker:name")),
    ("gateway", ("PUBLISH", "rq:pubsub:name", '{"command": "shutdown"}')),
    ("batch", ("HSET", "ksc:worker:forged", "slots_free", "99")),
    ("batch", ("PUBLISH", "ksc:{sid}:events", '{"type": "final"}')),
    # Workers never see uploads, batch jobs, references or API keys' counters.
    ("worker", ("GET", "ksc:batch:job:audio")),
    ("worker", ("HGETALL", "rq:job:job")),
    ("worker", ("RPUSH", "rq:queue:ksc-batch", "job")),
    ("worker", ("HGETALL", "ksc:references")),
    ("worker", ("ZRANGE", "ksc:key:{alice}:sessions", "0", "-1")),
    ("worker", ("SUBSCRIBE", "ksc:{sid}:events")),
    # The batch worker counts no API keys, serves no references, sends rq workers nothing.
    ("batch", ("ZRANGE", "ksc:key:{alice}:sessions", "0", "-1")),
    ("batch", ("HGETALL", "ksc:references")),
    ("batch", ("PUBLISH", "rq:pubsub:worker", '{"command": "shutdown"}')),
]


@pytest.mark.parametrize(("role", "command"), REFUSED, ids=lambda v: str(v))
def test_each_user_is_refused_what_its_role_does_not_need(
    acl_redis: AclRedis, role: str, command: tuple[str, ...]
) -> None:
    client = acl_redis.client(role)
    try:
        with pytest.raises(NoPermissionError):
            client.execute_command(*command)
    finally:
        client.close()


def test_the_default_user_is_off(acl_redis: AclRedis) -> None:
    anonymous = Redis(port=acl_redis.port)
    try:
        with pytest.raises(AuthenticationError):
            anonymous.ping()
        with pytest.raises((AuthenticationError, ResponseError)):
            anonymous.execute_command("AUTH", "default", "anything")
    finally:
        anonymous.close()
