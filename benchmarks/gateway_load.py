"""One gateway process under many live streams, with no decoders behind it.

    python -m benchmarks.gateway_load [--streams 500] [--seconds 20]

Starts a private redis-server and one ``ksc gateway`` process. A claimant in this
process plays the decoder side just far enough for audio to flow: it advertises one
worker with plenty of slots (the heartbeat a worker writes), reads new sessions from
the sessions stream with the consumer group, wins each with the real claim script
(:func:`shared.records.claim`) and publishes ``Claimed``. It never decodes. It is a
test harness: production code is unchanged.

``--streams`` websocket clients then each send raw 16 kHz s16 PCM in quarter-second
frames (4 frames/s), paced in real time. Every frame carries its stream and frame
number in its first 8 bytes; the gateway forwards raw PCM at the model's rate as it
is, a quarter second per stream entry, so each entry of a session's audio stream is
exactly one client frame. The forwarding delay of a frame is the entry's id (Redis
server time, ms) minus the client's wall-clock time just before it sent the frame
(same host, same clock). Gateway CPU is read from ``/proc`` over the window in
which every stream is live.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

import websockets
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from benchmarks.common import RAW_CAPS
from harness.cluster import free_port, redis_server, start_gateway, stop
from harness.measure import cpu_seconds, percentile
from ksc.client import speech_url
from shared import cluster, records, redis_client
from shared.keys import GROUP, Keys
from shared.wire import Claimed, SessionRequest, serialize_event

FRAME_BYTES = 8000
TAG = struct.Struct("!II")  # stream number, frame number
WORKER = "bench-claimant"
MODEL = "ko"


class Claimant:
    """Claims every session at once with the real claim script; decodes nothing."""

    def __init__(self, redis: Redis, keys: Keys, slots: int) -> None:
        self.redis = redis
        self.keys = keys
        self.slots = slots
        self.claimed = 0

    async def beat(self) -> None:
        heartbeat = cluster.Heartbeat(
            host="bench",
            pid=0,
            slots_total=self.slots,
            slots_free=self.slots,
            models=(MODEL,),
            version="bench",
        )
        await cluster.beat(self.redis, self.keys, WORKER, heartbeat, sample_rate=16000)

    async def run(self) -> None:
        stream = self.keys.sessions(MODEL)
        try:
            await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        beats = asyncio.create_task(self._beats())
        try:
            while True:
                reply = await self.redis.xreadgroup(
                    GROUP, WORKER, {stream: ">"}, count=100, block=500
                )
                for _stream, entries in reply or []:
                    for entry_id, fields in entries:
                        request = SessionRequest.parse(fields)
                        if await records.claim(self.redis, self.keys, request.sid, WORKER, 600):
                            self.claimed += 1
                            event = serialize_event(Claimed(worker=WORKER))
                            await self.redis.publish(self.keys.events(request.sid), event)
                        await self.redis.xack(stream, GROUP, entry_id)
        finally:
            beats.cancel()

    async def _beats(self) -> None:
        while True:
            await self.beat()
            await asyncio.sleep(1.0)


async def client(
    url: str,
    number: int,
    frames: int,
    sent: list[float],
    gate: asyncio.Event,
    deflate: bool,
    phase: float = 0.0,
) -> str:
    """One live stream; ``sent[k]`` is the wall time frame ``k`` left."""
    silence = bytes(FRAME_BYTES - TAG.size)
    said: list[str] = []

    async def listen(ws: Any) -> None:
        async for message in ws:  # a status message if the gateway ends the session
            said.append(str(message))

    try:
        compression = "deflate" if deflate else None
        async with websockets.connect(
            url, max_size=None, open_timeout=60, compression=compression
        ) as ws:
            listener = asyncio.create_task(listen(ws))
            await gate.wait()
            # Independent microphones: each stream's frames keep their own phase in the
            # quarter second, spread evenly, rather than all 500 landing at one instant.
            start = time.monotonic() + phase
            for k in range(frames):
                delay = start + k * 0.25 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent.append(time.time())
                await ws.send(TAG.pack(number, k) + silence)
            listener.cancel()
        return ""
    except (OSError, websockets.WebSocketException) as exc:
        return f"{exc!r} {said[:1]}"


async def _run(
    redis_url: str,
    gw_pid: int,
    ws: str,
    prefix: str,
    streams: int,
    seconds: float,
    profile: Path | None = None,
    deflate: bool = True,
) -> dict[str, Any]:
    keys = Keys(prefix)
    redis = redis_client.connect(redis_url)
    claimant = Claimant(redis_client.connect(redis_url), keys, slots=streams * 2)
    await claimant.beat()
    claiming = asyncio.create_task(claimant.run())
    frames = int(seconds * 4)
    sent: list[list[float]] = [[] for _ in range(streams)]
    gate = asyncio.Event()
    url = speech_url(ws, RAW_CAPS)
    tasks = []
    for n in range(streams):  # ramp up: sessions open 100 per second
        phase = 0.25 * n / streams
        tasks.append(asyncio.create_task(client(url, n, frames, sent[n], gate, deflate, phase)))
        if n % 10 == 9:
            await asyncio.sleep(0.1)
    async with asyncio.timeout(120):
        while claimant.claimed < streams:
            await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # every socket past admission
    gate.set()
    cpu_start, client_start = cpu_seconds(gw_pid), time.process_time()
    # CPU over the middle of the run, when every stream is live.
    await asyncio.sleep(min(2.0, seconds / 4))
    cpu0, t0 = cpu_seconds(gw_pid), time.monotonic()
    spy = None
    if profile is not None:  # py-spy samples the gateway's Python stacks meanwhile
        py_spy = str(Path(sys.executable).parent / "py-spy")
        spy = await asyncio.create_subprocess_exec(
            py_spy, "record", "--pid", str(gw_pid), "--duration", str(int(seconds / 2)),
            "--rate", "200", "--format", "raw", "--output", str(profile), "--nonblocking",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    await asyncio.sleep(seconds / 2)
    gateway_cores = (cpu_seconds(gw_pid) - cpu0) / (time.monotonic() - t0)
    errors = [e for e in await asyncio.gather(*tasks) if e]
    # CPU per frame over the whole streaming phase: what the gateway needs, whatever
    # share of the cores it got (other processes compete for them on a shared machine).
    gateway_cpu = cpu_seconds(gw_pid) - cpu_start
    client_cpu = time.process_time() - client_start
    if spy is not None:
        await spy.wait()
    await asyncio.sleep(0.5)
    claiming.cancel()
    delays: list[float] = []
    by_second: dict[int, list[float]] = {}
    sids = [m.decode() for m in await redis.zrange(keys.live, 0, -1)]
    for sid in sids:
        entries = await redis.xrange(keys.audio(sid))
        for entry_id, fields in entries:
            pcm = fields.get(b"pcm") or next(iter(fields.values()))
            if len(pcm) < TAG.size:
                continue
            number, k = TAG.unpack(pcm[: TAG.size])
            if number < streams and k < len(sent[number]):
                delays.append(int(entry_id.split(b"-")[0]) - sent[number][k] * 1000)
                by_second.setdefault(k // 4, []).append(delays[-1])
    missing = sum(len(s) for s in sent) - len(delays)
    await redis.aclose()
    await claimant.redis.aclose()
    return {
        "streams": streams,
        "seconds": seconds,
        "permessage_deflate": deflate,
        "frames_sent": sum(len(s) for s in sent),
        "claimed": claimant.claimed,
        "frames_forwarded": len(delays),
        "frames_missing": missing,
        "client_errors": errors[:5],
        "n_client_errors": len(errors),
        "forward_ms_p50": round(percentile(delays, 50), 1),
        "forward_ms_p99": round(percentile(delays, 99), 1),
        "forward_ms_max": round(max(delays, default=0.0), 1),
        # when in the run the slow frames were: p99 of each second of streaming
        "forward_ms_p99_by_second": [
            round(percentile(by_second[sec], 99), 1) for sec in sorted(by_second)
        ],
        "gateway_cpu_cores": round(gateway_cores, 3),
        "gateway_cpu_ms_per_frame": round(gateway_cpu / max(1, len(delays)) * 1000, 4),
        "gateway_cores_needed": round(gateway_cpu / max(1, len(delays)) * streams * 4, 3),
        "client_cpu_cores": round(client_cpu / seconds, 3),
        "delays_ms": [round(d, 1) for d in delays],
    }


def measure(
    streams: int,
    seconds: float,
    pool: int = 0,
    profile: Path | None = None,
    deflate: bool = True,
) -> dict[str, Any]:
    """Run the whole benchmark with its own Redis and gateway.

    ``pool`` > 0 sets the gateway's Redis connection pool limit (the
    ``max_connections`` URL option; otherwise ``shared.redis_client.MAX_CONNECTIONS``).
    """
    with redis_server() as url:
        port, prefix = free_port(), "gwbench"
        gw_url = f"{url}?max_connections={pool}" if pool else url
        gateway = start_gateway(gw_url, prefix, port)
        try:
            _wait_port(port)
            return asyncio.run(
                _run(
                    url,
                    gateway.pid,
                    f"ws://127.0.0.1:{port}",
                    prefix,
                    streams,
                    seconds,
                    profile,
                    deflate,
                )
            )
        finally:
            stop(gateway)


def _wait_port(port: int, limit: float = 30) -> None:
    import socket

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("gateway did not start")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--pool", type=int, default=0, help="gateway's Redis max_connections")
    parser.add_argument("--profile", type=Path, help="py-spy's collapsed stacks of the gateway")
    parser.add_argument(
        "--no-deflate", action="store_true", help="clients do not offer permessage-deflate"
    )
    args = parser.parse_args(argv)
    report = measure(args.streams, args.seconds, args.pool, args.profile, not args.no_deflate)
    report.pop("delays_ms")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
