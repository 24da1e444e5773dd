"""The images and their containers: sizes, build times, start to ready, takeover after
kill -9, and the worker probe's CPU with and without bytecode.

    python -m benchmarks.containers [--cold] [--trials 3] [--probes 5] [--out FILE.json]

Builds with ``scripts/build-images`` (``--cold`` first rebuilds everything as a fresh
machine would: debootstrap, then podman without its layer cache; a second run with
nothing changed gives the warm time). Then it runs the container test's cluster (the
chart rendered with ``deploy/podman/values.yaml``, started with podman by
:mod:`harness.pods`: Redis, two decoders, a gateway) and measures:

- start to ready: from ``podman run`` to the first pass of the startup and readiness
  probes (probed every 0.5 s, not every ``periodSeconds``);
- the readiness probe (``ksc check worker``) inside a worker container: CPU seconds and
  wall time, with the image's bytecode, and in a container of the same image whose
  venv bytecode was deleted first (the image as it was built before, which removed it);
- takeover trials: a real recording streamed in real time, the owning worker's
  container killed with SIGKILL at the first partial; the time until the session's
  record shows the takeover, and until the client's first message after that; the
  killed container is then restarted in place and its time to ready again recorded.

docs/deploy.md ("Images and the container test") quotes the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from benchmarks.common import machine
from harness.cluster import wait_ready
from harness.env import REPO, TESTDATA
from harness.failover import finals, run_session
from harness.media import pcm_of
from harness.pods import (
    CHART,
    CPU_OF,
    PODMAN,
    VALUES,
    Manifests,
    Node,
    Pod,
    free_ports,
    heartbeat,
    helm_template,
)
from harness.speech import assert_well_formed
from shared.keys import Keys

KEYS = Keys("ksc")
CLIP = "emotts_ava00001.wav"  # 10.8 s of read prose


def build(*args: str) -> dict[str, Any]:
    start = time.monotonic()
    proc = subprocess.run(
        [str(REPO / "scripts" / "build-images"), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    steps = {
        m[1]: float(m[2])
        for m in re.finditer(r"build-images: (\S+) (?:built )?in ([\d.]+) s", proc.stdout)
    }
    return {"seconds": round(time.monotonic() - start, 1), "images": steps}


def sizes() -> dict[str, int]:
    out = subprocess.run(
        [
            *PODMAN,
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}} {{.Size}}",
            "--filter",
            "reference=localhost/ksc-*",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        name, _, _ = line.partition(" ")
        raw = subprocess.run(
            [*PODMAN, "image", "inspect", "--format", "{{.Size}}", name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found[name] = int(raw)
    return found


def _probe_loop(probes: int, prepare: str = "") -> str:
    """A shell script that runs its arguments ``probes`` times, each as ``CPU_OF`` does:
    exit code, CPU seconds, then wall milliseconds, measured inside the container."""
    return (
        prepare + f"for i in $(seq {probes}); do "
        's=$(date +%s%N); r=$(python -c "$CPU_OF" "$@"); e=$(date +%s%N); '
        'echo "$r $(( (e - s) / 1000000 ))"; done'
    )


def _rows(out: str) -> list[tuple[float, float]]:
    rows = []
    for line in out.splitlines():
        status, cpu_s, wall_ms = line.split()
        assert status == "0", out
        rows.append((float(cpu_s), int(wall_ms) / 1000))
    return rows


def probe_cpu(worker: Pod, probes: int) -> dict[str, Any]:
    """The readiness probe's command, ``probes`` times each way, measured the same way."""
    command = worker.main["readinessProbe"]["exec"]["command"]
    # In the running worker container, as the kubelet runs it (its user, read-only root).
    with_bc = _rows(
        subprocess.run(
            [
                *PODMAN,
                "exec",
                "--env",
                f"CPU_OF={CPU_OF}",
                worker.container,
                "/bin/sh",
                "-c",
                _probe_loop(probes),
                "sh",
                *command,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    # The same image, env and hosts, in a container whose venv bytecode is deleted first
    # (the image as it was built before); PYTHONDONTWRITEBYTECODE, the image's, keeps
    # every run compiling again.
    env = [arg for k, v in worker.env().items() for arg in ("--env", f"{k}={v}")]
    hosts = json.loads(
        subprocess.run(
            [*PODMAN, "inspect", "--format", "{{json .HostConfig.ExtraHosts}}", worker.container],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    env += [arg for host in hosts for arg in ("--add-host", host)]
    prepare = "find /opt/venv -name __pycache__ -prune -exec rm -rf {} + && "
    without = _rows(
        subprocess.run(
            [
                *PODMAN,
                "run",
                "--rm",
                "--network",
                "host",
                "--no-healthcheck",
                "--user",
                "0",
                *env,
                "--env",
                f"CPU_OF={CPU_OF}",
                "--entrypoint",
                "/bin/sh",
                worker.image,
                "-c",
                _probe_loop(probes, prepare),
                "sh",
                *command,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )

    def summary(rows: list[tuple[float, float]]) -> dict[str, Any]:
        return {
            "cpu_s_median": round(statistics.median(r[0] for r in rows), 3),
            "wall_s_median": round(statistics.median(r[1] for r in rows), 3),
            "cpu_s": [round(r[0], 3) for r in rows],
        }

    return {
        "command": command,
        "timeout_s": worker.main["readinessProbe"]["timeoutSeconds"],
        "period_s": worker.main["readinessProbe"]["periodSeconds"],
        "with_bytecode": summary(with_bc),
        "without_bytecode": summary(without),
    }


async def takeover(workers: list[Pod], port: int, redis_url: str) -> dict[str, Any]:
    pcm = pcm_of(TESTDATA / "clips" / CLIP)
    redis = Redis.from_url(redis_url)
    killed: list[tuple[float, Pod]] = []
    after: list[float] = []
    taken: list[float] = []

    async def watch(sid: str) -> None:
        while await redis.hget(KEYS.meta(sid), "takeovers") is None:
            await asyncio.sleep(0.02)
        taken.append(time.monotonic())

    watcher: list[asyncio.Task[None]] = []

    async def on_message(message: dict[str, Any]) -> None:
        if taken and not after:
            after.append(time.monotonic())
        if not killed and not message["result"]["final"]:
            owner = (await redis.hget(KEYS.meta(message["id"]), "owner") or b"").decode()
            (victim,) = [w for w in workers if w.name == owner]
            await asyncio.to_thread(victim.kill, "KILL")
            killed.append((time.monotonic(), victim))
            watcher.append(asyncio.create_task(watch(message["id"])))

    try:
        result = await run_session(port, pcm, on_message=on_message)
        assert killed and watcher
        await asyncio.wait_for(watcher[0], 30)
    finally:
        await redis.aclose()
    assert_well_formed(result.messages)
    moment, victim = killed[0]
    await asyncio.to_thread(victim.restart)
    ready = await asyncio.to_thread(victim.wait_ready, 300, 0.5, heartbeat(redis_url, victim))
    return {
        "finals": len(finals(result)),
        "close_code": result.close_code,
        "takeover_recorded_s": round(taken[0] - moment, 2),
        "next_message_s": round(after[0] - moment, 2) if after else None,
        "restart_to_ready_s": round(ready, 1),
    }


async def run_cluster(trials: int, probes: int) -> dict[str, Any]:
    redis_port, gateway_port, m1, m2 = free_ports(4)
    ports = {6379: redis_port, 8888: gateway_port, 9100: m1}
    password = secrets.token_hex(16)
    docs = helm_template(CHART, [VALUES], {"redis.auth.password": password})
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ksc-pods-") as work:
        with Node(Manifests(docs), Path(work), ports) as node:
            ready: dict[str, float] = {}
            redis = node.run("ksc-redis")
            ready["redis"] = redis.wait_ready(60)
            workers = [node.run("ksc-decoder-ko"), node.run("ksc-decoder-ko", ports={m1: m2})]
            url = f"redis://:{password}@127.0.0.1:{redis_port}/0"
            for i, worker in enumerate(workers):
                ready[f"worker_{i + 1}"] = worker.wait_ready(300, hint=heartbeat(url, worker))
            gateway = node.run("ksc-gateway")
            ready["gateway"] = gateway.wait_ready(60, interval=0.1)
            report["start_to_ready_s"] = {k: round(v, 2) for k, v in ready.items()}
            print(json.dumps(report), flush=True)
            report["probe"] = probe_cpu(workers[0], probes)
            print(json.dumps(report["probe"]), flush=True)
            rows = []
            for n in range(trials):
                wait_ready(f"http://127.0.0.1:{gateway_port}", slots=8, limit=120)
                rows.append(await takeover(workers, gateway_port, url))
                print(f"takeover {n + 1}/{trials}: {json.dumps(rows[-1])}", flush=True)
            report["takeover"] = {
                "clip": CLIP,
                "trials": rows,
                "takeover_recorded_s_median": statistics.median(
                    r["takeover_recorded_s"] for r in rows
                ),
                "restart_to_ready_s_median": statistics.median(
                    r["restart_to_ready_s"] for r in rows
                ),
            }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true", help="first rebuild as a fresh machine")
    parser.add_argument("--trials", type=int, default=3, help="takeover trials")
    parser.add_argument("--probes", type=int, default=5, help="probe runs each way")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/containers.json")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"machine": machine()}
    builds: dict[str, Any] = {}
    if args.cold:
        builds["cold"] = build("--cold")
        print(f"cold build: {json.dumps(builds['cold'])}", flush=True)
    builds["warm"] = build()
    print(f"warm build: {json.dumps(builds['warm'])}", flush=True)
    report["build"] = builds
    report["image_bytes"] = sizes()
    report.update(asyncio.run(run_cluster(args.trials, args.probes)))
    if args.out.exists():  # keep what this run did not measure (e.g. a cold build)
        previous = json.loads(args.out.read_text())
        report["build"] = {**previous.get("build", {}), **report["build"]}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
