"""Hostile clients against a real gateway, and what counts as surviving them.

The corpus, drawn from a seeded RNG (deterministic for a seed), on
``/client/ws/speech``: random binary frames (raw PCM caps or "detect the format"),
frames over the gateway's ``--max-frame-bytes``, invalid UTF-8 in a text frame, text
that is not JSON or not a known message, ``EOS`` twice, audio after ``EOS``, malformed
and unsupported content types, random query strings, WAV/OGG/MP3 files with truncated
or corrupted headers, clients that send audio and then reset the TCP connection; on
``/client/dynamic/recognize``: the same corrupted files, bad content types and query
strings, bodies trickled a few hundred bytes at a time, uploads cut by a reset; on
``/client/dynamic/reference``: missing ids, invalid UTF-8, oversized bodies, unknown
ids. :func:`idle_connections` then opens thousands of idle connections at once: TCP
connections that never send a byte, requests whose headers never end, and websockets
that never send.

A case's outcome is *defined* when the websocket gets only well-formed messages
ending with a status message and a close, or results and a close 1000, or (for a
frame the websocket layer itself refuses) a close 1007/1009; and when HTTP answers
200 with a recognition JSON or a 4xx/503 with a JSON body carrying ``status``.
Anything else — a hang, a 5xx, a malformed message, a dead process — is counted.
The neighbour sessions of real speech must get exactly their expected finals.

``tests/fuzz/`` runs it bounded; ``python -m benchmarks.fuzz`` runs it long.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import socket
import struct
import tempfile
import wave
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import websockets

from harness.measure import memory
from ksc.client import speech_url, stream

RAW = (
    "audio/x-raw, layout=(string)interleaved, rate=(int)16000, format=(string)S16LE, "
    "channels=(int)1"
)
#: Case timeout: admission wait (5 s) + claim + decoding a few seconds of audio, generously.
CASE_TIMEOUT_S = 60.0
BAD_TYPES = [
    "audio/x-raw, rate=(int)abc",
    "audio/x-raw, format=(string)S99LE, rate=(int)16000",
    "audio/x-raw, rate=(int)0, format=(string)S16LE",
    "audio/x-raw, rate=(int)-16000, format=(string)S16LE",
    "audio/x-raw, channels=(int)999, rate=(int)16000, format=(string)S16LE",
    "audio/x-raw, rate=(int)99999999999999999999, format=(string)S16LE",
    "audio/x-raw,,,,",
    "audio/x-raw, layout=(string)planar, rate=(int)16000, format=(string)S16LE",
    "video/mp4",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "audio/x-raw-int; rate=abc",
    "audio/x-raw-int; rate=16000; format=U99",
    "audio/x-raw; rate=16000; channels=0",
]
BAD_TEXT = [
    "{",
    "[1, 2",
    '{"adaptation_state": ',
    "null",
    "[]",
    "42",
    '"EOS"',
    "eos",
    "EOF",
    '{"eos": true}',
    "{}" * 1000,
    "\x00\x01\x02",
    "🙂" * 100,
]
REFERENCE = "/client/dynamic/reference"
RECOGNIZE = "/client/dynamic/recognize"


@dataclass
class Target:
    ws: str
    http: str
    max_frame_bytes: int


@dataclass
class Tally:
    messages_sent: int = 0
    cases: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    undefined: list[str] = field(default_factory=list)
    neighbours: int = 0
    neighbours_affected: list[str] = field(default_factory=list)
    idle: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {
            "cases": sum(self.cases.values()),
            "messages_sent": self.messages_sent,
            "undefined_outcomes": len(self.undefined),
            "undefined_examples": self.undefined[:10],
            "neighbours": self.neighbours,
            "neighbours_affected": len(self.neighbours_affected),
            "neighbour_failures": self.neighbours_affected[:5],
            "by_case": dict(sorted(self.cases.items())),
            "by_outcome": dict(sorted(self.outcomes.items())),
            "idle": self.idle,
        }


# --- inputs ------------------------------------------------------------------------------


def media_seeds(pcm: bytes, folder: Path) -> dict[str, bytes]:
    """The same speech as WAV, OGG/Vorbis (sox) and MP3 and OGG/Opus (FFmpeg via PyAV)."""
    from harness.media import CODECS, encode, ogg_vorbis

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    wav = buf.getvalue()
    path = folder / "seed.wav"
    path.write_bytes(wav)
    return {
        "wav": wav,
        "ogg-vorbis": ogg_vorbis(path),
        "mp3": encode(pcm, 16000, CODECS["mp3"]),
        "ogg-opus": encode(pcm, 16000, CODECS["ogg-opus"]),
    }


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One seeded corruption of a file's header (or of its framing)."""
    how = rng.choice(["truncate", "flip", "splice", "magic", "headless", "size"])
    head = min(len(data), 128)
    if how == "truncate":  # the header cut short, nothing after it
        return how, data[: rng.randint(1, head)]
    out = bytearray(data)
    if how == "flip":  # random bytes of the header overwritten
        for _ in range(rng.randint(1, 12)):
            out[rng.randrange(head)] = rng.randrange(256)
    elif how == "splice":  # garbage inserted into the header
        at = rng.randrange(head)
        out[at:at] = rng.randbytes(rng.randint(1, 64))
    elif how == "magic":  # the container's signature destroyed
        out[0:4] = rng.randbytes(4)
    elif how == "headless":  # the middle of the file only
        return how, bytes(out[len(out) // 3 : len(out) // 3 + rng.randint(100, 20000)])
    else:  # absurd sizes where a header keeps them (RIFF / data chunk lengths)
        for at in (4, 40):
            if at + 4 <= len(out):
                out[at : at + 4] = struct.pack("<I", rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF]))
    return how, bytes(out)


def random_text(rng: random.Random, n: int) -> str:
    alphabet = "abcXYZ09=&;,()/?%#+ \t-_.~'\"\\가나다🙂\u0000\u202e"
    return "".join(rng.choice(alphabet) for _ in range(n))


def random_query(rng: random.Random) -> str:
    keys = ["content-type", "model", "user-id", "content-id", "phrases", "x", "", "token"]
    pairs = [(rng.choice(keys), random_text(rng, rng.randint(0, 40))) for _ in range(4)]
    pairs.append(("content-type", RAW) if rng.random() < 0.5 else ("content-type", ""))
    raw = urlencode(pairs)
    if rng.random() < 0.3:  # broken percent-encoding and bare separators
        raw += "&%zz=%&&=&" + quote(random_text(rng, 10))
    return raw


# --- one case ------------------------------------------------------------------------------


def _rst(transport: Any) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a client that vanishes does."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def judge_ws(messages: list[Any], close_code: int | None) -> str | None:
    """The outcome's name when it is defined, else ``None``."""
    if not messages:
        if close_code in (1007, 1009):  # refused by the websocket layer (RFC 6455)
            return f"close {close_code}"
        return "closed" if close_code == 1000 else None
    if not all(
        isinstance(m, dict) and isinstance(m.get("status"), int) and m.get("id") for m in messages
    ):
        return None
    statuses = [m["status"] for m in messages]
    if any(s != 0 for s in statuses[:-1]):
        return None  # a status message must be the last one
    last = statuses[-1]
    if last != 0:
        if "message" not in messages[-1] or close_code not in (1000, 1007, 1009):
            return None
        return f"status {last}"
    for m in messages:
        hyps = m.get("result", {}).get("hypotheses")
        if not hyps or not isinstance(hyps[0].get("transcript"), str):
            return None
    return "results" if close_code == 1000 else None


async def ws_case(
    target: Target,
    tally: Tally,
    query: str,
    frames: list[bytes | str | tuple[str, bytes]],
    *,
    vanish: bool = False,
    giant: bool = False,
) -> str | None:
    """Send ``frames`` (bytes: binary; str: text; ("utf8?", b): raw text frame), then read
    until the server closes. ``vanish``: reset the connection after the frames instead."""
    url = f"{target.ws}/client/ws/speech?{query}"
    messages: list[Any] = []
    try:
        ws = await websockets.connect(url, max_size=None, open_timeout=30)
    except websockets.InvalidStatus as exc:
        code = exc.response.status_code
        return f"http {code}" if 400 <= code < 500 else None
    try:
        for frame in frames:
            try:
                if isinstance(frame, tuple):
                    await ws.send(frame[1], text=True)
                else:
                    await ws.send(frame)
            except websockets.ConnectionClosed:
                break  # the server ended the session already
            tally.messages_sent += 1
            await asyncio.sleep(0)
        if vanish:
            await asyncio.sleep(0.3)
            _rst(ws.transport)
            return "client reset"
        try:
            async for raw in ws:
                try:
                    messages.append(json.loads(raw))
                except ValueError:
                    messages.append(raw)
        except websockets.ConnectionClosedError:
            pass
        if giant and not messages and ws.close_code == 1006:
            # The gateway refused the frame from its header (close 1009) while we were
            # still writing it: the close frame is lost to the reset that follows.
            return "dropped during giant frame"
        return judge_ws(messages, ws.close_code)
    finally:
        if not vanish:
            await ws.close()


async def http_case(
    target: Target,
    tally: Tally,
    method: str,
    path: str,
    *,
    body: bytes | Callable[[], Any] = b"",
    headers: dict[str, str] | None = None,
) -> str | None:
    async with aiohttp.ClientSession() as http:
        data = body() if callable(body) else body
        async with http.request(
            method, f"{target.http}{path}", data=data, headers=headers or {}
        ) as resp:
            tally.messages_sent += 1
            text = await resp.text()
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    code = resp.status
    if code == 200:
        if path.startswith(RECOGNIZE):
            ok = doc.get("status") == 0 and isinstance(doc.get("hypotheses"), list)
            return "http 200" if ok else None
        return "http 200" if isinstance(doc, dict) else None
    if (400 <= code < 500 or code == 503) and isinstance(doc, dict) and "status" in doc:
        return f"http {code} status {doc['status']}"
    return None


async def http_vanish(target: Target, tally: Tally, body: bytes) -> str:
    """An upload announced larger than it is, reset halfway."""
    host, port = target.http.removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"PUT {RECOGNIZE} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {RAW.replace(' ', '')}\r\n"
        f"Content-Length: {len(body) * 4}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    tally.messages_sent += 1
    await asyncio.sleep(0.5)
    _rst(writer.transport)
    return "client reset"


def trickle(pcm: bytes, rng: random.Random) -> Callable[[], Any]:
    """A chunked body sent a few hundred bytes at a time, with pauses."""

    async def gen() -> Any:
        at = 0
        while at < len(pcm):
            n = rng.randint(50, 800)
            yield pcm[at : at + n]
            at += n
            await asyncio.sleep(rng.uniform(0.0, 0.03))

    return partial(gen)


# --- the corpus ------------------------------------------------------------------------------


def cases(
    target: Target, tally: Tally, rng: random.Random, pcm: bytes, seeds: dict[str, bytes]
) -> list[tuple[str, Callable[[], Awaitable[str | None]]]]:
    """One round: every kind of case once, with fresh random parameters."""
    raw_q = urlencode({"content-type": RAW})
    auto_q = urlencode({"content-type": ""})
    speech = pcm[: 32000 * 2]  # two seconds of real speech
    out: list[tuple[str, Callable[[], Awaitable[str | None]]]] = []

    def add(name: str, make: Callable[[], Awaitable[str | None]]) -> None:
        out.append((name, make))

    def randframes() -> list[bytes | str | tuple[str, bytes]]:
        sizes = [1, 3, 17, 640, 8000, 65536]
        return [rng.randbytes(rng.choice(sizes)) for _ in range(rng.randint(1, 6))]

    frames: list[bytes | str | tuple[str, bytes]] = [*randframes(), "EOS"]
    add("ws random frames raw", partial(ws_case, target, tally, raw_q, frames))
    frames = [*randframes(), "EOS"]
    add("ws random frames detect", partial(ws_case, target, tally, auto_q, frames))
    frames = [*randframes()]
    add("ws random frames no EOS", partial(ws_case, target, tally, raw_q, frames, vanish=True))
    size = target.max_frame_bytes + rng.choice([1, 1000, target.max_frame_bytes])
    frames = [speech[:8000], rng.randbytes(size), "EOS"]
    add("ws giant frame", partial(ws_case, target, tally, raw_q, frames, giant=True))
    bad = rng.choice([b"\xff\xfe", b"EOS\xc3", b"\xed\xa0\x80", b"ok\xf8\x88\x80\x80\x80"])
    frames = [speech[:8000], ("text", bad)]
    add("ws invalid utf-8", partial(ws_case, target, tally, raw_q, frames))
    text = rng.choice([*BAD_TEXT, random_text(rng, rng.randint(1, 200))])
    frames = [speech[:8000], text, "EOS"]
    add("ws bad text/json", partial(ws_case, target, tally, raw_q, frames))
    frames = [speech[:16000], '{"adaptation_state": {"x": 1}}', "EOS", "EOS"]
    add("ws EOS twice", partial(ws_case, target, tally, raw_q, frames))
    frames = [speech[:16000], "EOS", speech[:8000]]
    add("ws audio after EOS", partial(ws_case, target, tally, raw_q, frames))
    ctype = rng.choice([*BAD_TYPES, random_text(rng, rng.randint(1, 60))])
    frames = [speech[:16000], "EOS"]
    query = urlencode({"content-type": ctype})
    add("ws bad content type", partial(ws_case, target, tally, query, frames))
    query = random_query(rng)
    add("ws random query", partial(ws_case, target, tally, query, frames))
    kind = rng.choice(sorted(seeds))
    how, data = mutate(seeds[kind], rng)
    step = rng.choice([500, 4000, 16000])
    frames = [*(data[i : i + step] for i in range(0, len(data), step)), "EOS"]
    add(f"ws corrupt {kind} ({how})", partial(ws_case, target, tally, auto_q, frames))
    frames = [speech[i : i + 8000] for i in range(0, 32000, 8000)]
    add("ws reset mid-session", partial(ws_case, target, tally, raw_q, frames, vanish=True))

    kind = rng.choice(sorted(seeds))
    how, data = mutate(seeds[kind], rng)
    ctype = rng.choice(["", "audio/wav", "audio/ogg", "audio/mpeg", "application/octet-stream"])
    add(
        f"http corrupt {kind} ({how})",
        partial(
            http_case, target, tally, "PUT", RECOGNIZE, body=data, headers={"Content-Type": ctype}
        ),
    )
    ctype = rng.choice([*BAD_TYPES, random_text(rng, 30).replace("\u0000", "")])
    add(
        "http bad content type",
        partial(
            http_case,
            target,
            tally,
            "POST",
            RECOGNIZE,
            body=speech[:16000],
            headers={"Content-Type": ctype},
        ),
    )
    query = random_query(rng)
    add(
        "http random query",
        partial(
            http_case,
            target,
            tally,
            "PUT",
            f"{RECOGNIZE}?{query}",
            body=speech[:16000],
            headers={"Content-Type": "audio/x-raw; rate=16000; format=S16LE; channels=1"},
        ),
    )
    body_of = trickle(speech[:24000], random.Random(rng.random()))
    add(
        "http trickled body",
        partial(
            http_case,
            target,
            tally,
            "PUT",
            RECOGNIZE,
            body=body_of,
            headers={"Content-Type": "audio/x-raw"},
        ),
    )
    add("http reset mid-upload", partial(http_vanish, target, tally, speech[:16000]))
    ref_cases: list[tuple[dict[str, str], bytes]] = [
        ({}, b"no id"),
        ({"Content-Id": "fz-utf8"}, b"\xff\xfe bad"),
        ({"Content-Id": "fz-big"}, b"x" * (1024 * 1024 + 1)),
        ({"Content-Id": "fz-" + str(rng.randrange(10**6))}, "참조 텍스트".encode()),
    ]
    headers, body = rng.choice(ref_cases)
    add(
        "http reference post",
        partial(http_case, target, tally, "POST", REFERENCE, body=body, headers=headers),
    )
    cid = quote(random_text(rng, 12))
    add(
        "http reference get",
        partial(http_case, target, tally, "GET", f"{REFERENCE}?content-id={cid}"),
    )
    return out


async def run_case(tally: Tally, name: str, make: Callable[[], Awaitable[str | None]]) -> None:
    tally.cases[name.split(" (")[0]] += 1
    try:
        async with asyncio.timeout(CASE_TIMEOUT_S):
            outcome = await make()
    except TimeoutError:
        outcome = None
        name += ": timed out"
    except (OSError, aiohttp.ClientError, websockets.WebSocketException) as exc:
        outcome = None
        name += f": {type(exc).__name__}: {exc}"
    if outcome is None:
        tally.undefined.append(name)
    else:
        tally.outcomes[outcome] += 1


async def neighbours(
    target: Target, pcm: bytes, expected: list[tuple[int, str]], tally: Tally, stop: asyncio.Event
) -> None:
    """The same real speech, raw PCM in real time, session after session, until ``stop``."""
    url = speech_url(target.ws, RAW)
    while not stop.is_set():
        try:
            async with asyncio.timeout(CASE_TIMEOUT_S + len(pcm) / 32000):
                result = await stream(url, pcm, realtime=True)
        except (TimeoutError, OSError, websockets.WebSocketException) as exc:
            tally.neighbours += 1
            tally.neighbours_affected.append(f"{type(exc).__name__}: {exc}")
            continue
        got = [(f["segment"], f["result"]["hypotheses"][0]["transcript"]) for f in result.finals]
        tally.neighbours += 1
        if got != expected or result.close_code != 1000 or result.status != 0:
            tally.neighbours_affected.append(f"{got} close {result.close_code}")


async def run_corpus(
    target: Target,
    pcm: bytes,
    expected: list[tuple[int, str]],
    *,
    rounds: int,
    seed: int,
    concurrency: int = 3,
) -> Tally:
    """``rounds`` rounds of the corpus, ``concurrency`` cases at a time, next to a neighbour."""
    rng = random.Random(seed)
    tally = Tally()
    with tempfile.TemporaryDirectory() as tmp:
        seeds = media_seeds(pcm[: 32000 * 3], Path(tmp))
    work = [c for _ in range(rounds) for c in cases(target, tally, rng, pcm, seeds)]
    stop = asyncio.Event()
    neighbour = asyncio.create_task(neighbours(target, pcm, expected, tally, stop))
    gate = asyncio.Semaphore(concurrency)

    async def limited(name: str, make: Callable[[], Awaitable[str | None]]) -> None:
        async with gate:
            await run_case(tally, name, make)

    await asyncio.gather(*(limited(n, m) for n, m in work))
    stop.set()
    await neighbour
    return tally


async def idle_connections(
    target: Target, count: int, tally: Tally, pid: int | None = None
) -> dict[str, Any]:
    """``count`` connections that never finish anything, held open at once: silent TCP,
    requests whose headers never end, websockets (status and speech) that never send.
    While they are open, a health probe and a status push must still answer."""
    host, port = target.http.removeprefix("http://").split(":")
    writers: list[asyncio.StreamWriter] = []
    sockets: list[Any] = []
    for i in range(count):
        _reader, writer = await asyncio.open_connection(host, int(port))
        if i % 2:
            writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode())
        writers.append(writer)
    for i in range(20):
        speech = f"/client/ws/speech?{urlencode({'content-type': RAW})}"
        path = "/client/ws/status" if i % 5 else speech
        sockets.append(await websockets.connect(f"{target.ws}{path}", open_timeout=30))
    await asyncio.sleep(2.0)
    async with aiohttp.ClientSession() as http, http.get(f"{target.http}/healthz") as resp:
        healthy = resp.status == 200
    held = gateway_memory(pid) if pid else None
    for ws in sockets:
        await ws.close()
    for writer in writers:
        writer.close()
    await asyncio.sleep(1.0)
    tally.messages_sent += count // 2
    return {
        "tcp_connections": count,
        "websockets": len(sockets),
        "healthz_while_open": healthy,
        "gateway_memory_mb_while_open": held,
    }


def gateway_memory(pid: int) -> dict[str, float]:
    return {k: round(v, 1) for k, v in memory(pid).items()}
