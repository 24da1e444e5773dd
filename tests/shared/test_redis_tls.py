"""The URLs the Helm chart renders, against real TLS servers with ACL users.

A private CA signs the servers' certificate; the client trusts it through
``?ssl_ca_certs=`` (the chart's ``redis.tls.caSecret``). Redis requires the ACL user
``alice`` (the default user is off); the sentinel has a user of its own and is reached
over TLS too, as is a one-node Redis Cluster. Each test connects with the very URL shape
``tests/deploy/test_operations.py`` finds in the rendered pods.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest

from harness.cluster import cluster_port, free_port
from harness.env import UNIT
from shared.redis_client import connect

USER, PASSWORD = "alice", "pa55word"
SENTINEL_USER, SENTINEL_PASSWORD = "sally", "s3ntinel"
ACL = f"user default off\nuser {USER} on >{PASSWORD} ~* &* +@all\n"

pytestmark = pytest.mark.skipif(
    not (shutil.which("redis-server") and shutil.which("openssl")),
    reason="redis-server and openssl are needed",
)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(folder: Path) -> None:
    """ca.crt, and server.crt/server.key for 127.0.0.1 and localhost, signed by it."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=ksc test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=folder,
    )
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        cwd=folder,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
        "-out",
        "server.crt",
        cwd=folder,
    )
    (folder / "server.key").chmod(0o600)


def tls_conf(folder: Path, port: int) -> str:
    return (
        f"port 0\ntls-port {port}\nbind 127.0.0.1\ndir {folder}\n"
        f"tls-cert-file {folder.parent / 'server.crt'}\n"
        f"tls-key-file {folder.parent / 'server.key'}\n"
        f"tls-ca-cert-file {folder.parent / 'ca.crt'}\n"
        "tls-auth-clients no\ntls-replication yes\n"
        'save ""\nappendonly no\n'
    )


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    port: int
    log: BinaryIO

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def start(folder: Path, conf: str, port: int, *, sentinel: bool = False) -> Process:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("sentinel.conf" if sentinel else "redis.conf")
    path.write_text(conf)
    argv = ["redis-server", str(path), *(["--sentinel"] if sentinel else [])]
    log = (folder / "log").open("wb")
    process = Process(subprocess.Popen(argv, stdout=log, stderr=log, cwd=folder), port, log)
    ca = folder.parent / "ca.crt"
    deadline = time.monotonic() + 15 * UNIT
    while True:
        probe = subprocess.run(
            ["redis-cli", "--tls", "--cacert", str(ca), "-p", str(port), "ping"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        # Up: it answers (with NOAUTH/NOPERM for a server whose default user is off).
        if probe.stdout.strip() and "Connection refused" not in probe.stdout + probe.stderr:
            return process
        if process.proc.poll() is not None or time.monotonic() > deadline:
            process.stop()
            raise AssertionError(f"{path} did not start: {(folder / 'log').read_text()}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("redis-tls")
    make_certificates(folder)
    yield folder


@pytest.fixture(scope="module")
def servers(tls_dir: Path) -> Iterator[dict[str, Process]]:
    started: dict[str, Process] = {}
    try:
        port = free_port()
        started["redis"] = start(tls_dir / "redis", tls_conf(tls_dir / "redis", port) + ACL, port)
        sport = free_port()
        sentinel = (
            tls_conf(tls_dir / "sentinel", sport)
            + f"sentinel monitor mymaster 127.0.0.1 {port} 1\n"
            + f"sentinel auth-user mymaster {USER}\nsentinel auth-pass mymaster {PASSWORD}\n"
            + f"user default off\nuser {SENTINEL_USER} on >{SENTINEL_PASSWORD} allchannels +@all\n"
        )
        started["sentinel"] = start(tls_dir / "sentinel", sentinel, sport, sentinel=True)
        cport = cluster_port()
        cluster = (
            tls_conf(tls_dir / "cluster", cport)
            + ACL
            + (
                "cluster-enabled yes\ntls-cluster yes\n"
                f"cluster-config-file {tls_dir / 'cluster' / 'nodes.conf'}\n"
            )
        )
        started["cluster"] = start(tls_dir / "cluster", cluster, cport)
        subprocess.run(
            [
                "redis-cli",
                "--tls",
                "--cacert",
                str(tls_dir / "ca.crt"),
                "-p",
                str(cport),
                "--user",
                USER,
                "--pass",
                PASSWORD,
                "--no-auth-warning",
                "cluster",
                "addslotsrange",
                "0",
                "16383",
            ],
            check=True,
            capture_output=True,
            timeout=10,
        )
        yield started
    finally:
        for process in started.values():
            process.stop()


async def _whoami(url: str) -> str:
    client = connect(url)
    try:
        await client.set("ksc:tls-test", "ok")
        assert await client.get("ksc:tls-test") == b"ok"
        name: bytes = await client.execute_command("ACL", "WHOAMI")
        return name.decode()
    finally:
        await client.aclose()


async def _eventually_whoami(url: str) -> None:
    """``ACL WHOAMI`` through ``url`` answers :data:`USER` within 15 units."""
    deadline = time.monotonic() + 15 * UNIT
    while True:
        try:
            assert await _whoami(url) == USER
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_standalone_tls_with_a_user_and_a_private_ca(
    tls_dir: Path, servers: dict[str, Process]
) -> None:
    ca = tls_dir / "ca.crt"
    port = servers["redis"].port
    url = f"rediss://{USER}:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    assert await _whoami(url) == USER


async def test_sentinel_tls_with_users_of_its_own(
    tls_dir: Path, servers: dict[str, Process]
) -> None:
    ca = tls_dir / "ca.crt"
    sport = servers["sentinel"].port
    url = (
        f"rediss+sentinel://{USER}:{PASSWORD}@127.0.0.1:{sport}/mymaster/0"
        f"?sentinel_password={SENTINEL_PASSWORD}&sentinel_username={SENTINEL_USER}"
        f"&ssl_ca_certs={ca}"
    )
    await _eventually_whoami(url)  # the sentinel needs a moment to see its master


async def test_cluster_tls_with_a_user(tls_dir: Path, servers: dict[str, Process]) -> None:
    ca = tls_dir / "ca.crt"
    cport = servers["cluster"].port
    url = f"rediss+cluster://{USER}:{PASSWORD}@127.0.0.1:{cport}?ssl_ca_certs={ca}"
    await _eventually_whoami(url)  # slots are assigned, the node reaches cluster_state:ok


async def test_the_wrong_ca_is_refused(tmp_path: Path, servers: dict[str, Process]) -> None:
    """The certificate is really checked: another CA's bundle does not connect."""
    make_certificates(tmp_path)
    port = servers["redis"].port
    url = f"rediss://{USER}:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.crt'}"
    client = connect(url)
    try:
        with pytest.raises(Exception, match=r"(?i)certificate"):
            await client.ping()
    finally:
        await client.aclose()
