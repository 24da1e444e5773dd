"""Hostile clients a long-running cluster meets, one heavy action at a time.

Where :mod:`harness.fuzz` runs a corpus of many small malformed cases, these are the
few that cost a server the most if nothing bounds them: decompression bombs (an hour
of FLAC silence at 1 kHz; a 16 MiB frame of 8-bit PCM at 1 kHz, 4.7 hours of audio), a
multi-megabyte vosk ``phrase_list``, deeply nested JSON as a text frame and as
``?phrases=``, garbage binary, sockets that never send or trickle a byte every few
seconds, a client that vanishes mid-session, and status sockets held open.

Each action opens its own connection, misbehaves, then reads until the server ends it
(a status message, an HTTP 4xx on the upgrade, or a close) and records an
:class:`Outcome`: how it ended, after how long, and whether that was within the
action's bound. An action still open at its bound is *hung*; an HTTP 5xx is a server
error. The exact codes are recorded, not judged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection

from harness.fuzz import RAW, _rst
from harness.media import Codec, encode
from harness.speech import COMMANDS, FRAME
from ksc.client import speech_url
from shared.tasks import stop_tasks

#: One hour of digital silence at 1 kHz, FLAC: ~270 kB that decode to 3.6 M samples.
FLAC_1K = Codec("flac-1k", "flac", "flac", 1000)
BOMB_SECONDS = 3600
#: The raw bomb: one frame of 8-bit PCM at 1 kHz this large (the gateway's default
#: ``--max-frame-bytes``), 16.8 M samples, 4.7 hours of audio.
RAW_BOMB_BYTES = 16 * 1024 * 1024
#: Bytes of phrase list JSON in the vosk config.
PHRASE_LIST_BYTES = 3 * 1024 * 1024
NESTING = 100_000
TRICKLE_EVERY_S = 3.0
#: How long an action may take before it counts as hung, beyond what the server's own
#: timers allow (``--idle-timeout``): decoding or refusing a bomb, a status message.
BOUND_S = 120.0
SHORT_BOUND_S = 30.0

IsLive = Callable[[str], Awaitable[bool | None]]


@dataclass
class Outcome:
    kind: str
    bound_s: float
    at: float = field(default_factory=time.time)
    seconds: float = 0.0
    http_status: int | None = None
    status: int | None = None
    message: str = ""
    close_code: int | None = None
    messages: int = 0
    hung: bool = False
    error: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def server_error(self) -> bool:
        return self.http_status is not None and self.http_status >= 500

    @property
    def outcome(self) -> str:
        if self.hung:
            return "hung"
        if self.http_status is not None:
            return f"http {self.http_status}"
        if self.status:
            return f"status {self.status}"
        if self.close_code is not None:
            return f"close {self.close_code}"
        if self.error:
            return "error " + self.error.split(":", 1)[0]
        return str(self.detail.get("outcome", "ended"))

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "outcome": self.outcome, "server_error": self.server_error}


@dataclass
class Hostile:
    """The actions against the gateway at ``ws``; ``speech``: real 16 kHz s16 speech."""

    ws: str
    speech: bytes
    rng: random.Random
    #: whether a session id is still in the live index (None: cannot tell now)
    is_live: IsLive | None = None
    idle_timeout_s: float = 60.0
    status_hold_s: float = 120.0
    status_sockets: int = 3
    _flac: bytes = b""
    _raw_bombs: int = 0
    _garbage: int = 0

    def actions(self) -> list[tuple[str, float, Callable[[], Awaitable[Outcome]]]]:
        """Every action with its bound (seconds), in the order a round-robin takes them."""
        idle = self.idle_timeout_s
        return [
            ("flac bomb", BOUND_S, self.flac_bomb),
            ("vosk huge phrase_list", SHORT_BOUND_S, self.vosk_phrases),
            ("raw 1 kHz 16 MiB frame", BOUND_S, self.raw_bomb),
            ("nested JSON text frame", SHORT_BOUND_S, self.nested_text),
            ("vosk silent socket", idle + SHORT_BOUND_S, self.vosk_silent),
            ("nested JSON ?phrases=", SHORT_BOUND_S, self.nested_query),
            ("kgs byte trickle", idle + 60.0, self.trickle),
            ("garbage binary", 60.0, self.garbage),
            ("client vanishes", SHORT_BOUND_S + 5.0, self.vanish),
            ("status sockets held", self.status_hold_s + SHORT_BOUND_S, self.status_hold),
        ]

    # --- the actions ----------------------------------------------------------------

    async def flac_bomb(self) -> Outcome:
        if not self._flac:
            self._flac = await asyncio.to_thread(
                encode, bytes(2 * BOMB_SECONDS * FLAC_1K.rate), FLAC_1K.rate, FLAC_1K
            )
        out = Outcome("flac bomb", BOUND_S)
        out.detail = {"bytes": len(self._flac), "audio_s": BOMB_SECONDS, "rate": FLAC_1K.rate}
        data = self._flac

        async def send(ws: ClientConnection) -> None:
            await ws.send(data)
            await ws.send("EOS")

        await self._converse(out, speech_url(self.ws, "audio/x-flac"), send)
        return out

    async def raw_bomb(self) -> Outcome:
        self._raw_bombs += 1
        fmt = "U8" if self._raw_bombs % 2 else "S8"
        out = Outcome(f"raw {fmt} 1 kHz 16 MiB frame", BOUND_S)
        gen = np.random.default_rng(self.rng.randrange(2**32))
        dither = gen.integers(-1, 2, RAW_BOMB_BYTES, dtype=np.int16)  # silence, +-1 step
        samples = (dither + 128).astype(np.uint8) if fmt == "U8" else dither.astype(np.int8)
        frame = samples.tobytes()
        out.detail = {"bytes": len(frame), "audio_s": len(frame) // 1000, "format": fmt}
        caps = f"audio/x-raw, format=(string){fmt}, rate=(int)1000, channels=(int)1"

        async def send(ws: ClientConnection) -> None:
            await ws.send(frame)
            await ws.send("EOS")

        await self._converse(out, speech_url(self.ws, caps), send)
        return out

    async def vosk_phrases(self) -> Outcome:
        out = Outcome("vosk huge phrase_list", SHORT_BOUND_S)
        phrases: list[str] = []
        size = 0
        while size < PHRASE_LIST_BYTES:
            phrase = f"{COMMANDS[len(phrases) % len(COMMANDS)]} {len(phrases)}"
            phrases.append(phrase)
            size += len(phrase.encode()) + 4
        config = json.dumps({"config": {"sample_rate": 16000, "phrase_list": phrases}})
        out.detail = {"config_bytes": len(config), "phrases": len(phrases)}
        speech = self.speech[: 4 * FRAME]

        async def send(ws: ClientConnection) -> None:
            await ws.send(config)
            await ws.send(speech)
            await ws.send('{"eof" : 1}')

        await self._converse(out, f"{self.ws}/vosk", send)
        return out

    async def vosk_silent(self) -> Outcome:
        """Connects and never sends: the server's idle timeout must end it."""
        out = Outcome("vosk silent socket", self.idle_timeout_s + SHORT_BOUND_S)

        async def send(ws: ClientConnection) -> None:
            return None

        await self._converse(out, f"{self.ws}/vosk", send)
        return out

    async def trickle(self) -> Outcome:
        """One byte every few seconds, never ``EOS``: a slot held at almost no cost."""
        out = Outcome("kgs byte trickle", self.idle_timeout_s + 60.0)
        out.detail = {"byte_every_s": TRICKLE_EVERY_S}

        async def send(ws: ClientConnection) -> None:
            sent = 0
            while True:
                await ws.send(bytes([self.rng.randrange(256)]))
                sent += 1
                out.detail["bytes_sent"] = sent
                await asyncio.sleep(TRICKLE_EVERY_S)

        await self._converse(out, speech_url(self.ws, RAW), send)
        return out

    async def nested_text(self) -> Outcome:
        out = Outcome("nested JSON text frame", SHORT_BOUND_S)
        out.detail = {"depth": NESTING}
        speech = self.speech[: 2 * FRAME]

        async def send(ws: ClientConnection) -> None:
            await ws.send(speech)
            await ws.send("[" * NESTING)
            await ws.send("EOS")

        await self._converse(out, speech_url(self.ws, RAW), send)
        return out

    async def nested_query(self) -> Outcome:
        out = Outcome("nested JSON ?phrases=", SHORT_BOUND_S)
        out.detail = {"depth": NESTING}
        speech = self.speech[: 4 * FRAME]

        async def send(ws: ClientConnection) -> None:
            await ws.send(speech)
            await ws.send("EOS")

        await self._converse(out, speech_url(self.ws, RAW, phrases="[" * NESTING), send)
        return out

    async def garbage(self) -> Outcome:
        self._garbage += 1
        caps = RAW if self._garbage % 2 else ""  # raw PCM, or "detect the format"
        out = Outcome("garbage binary", 60.0)
        frames = [self.rng.randbytes(65536) for _ in range(4)]
        out.detail = {"content_type": caps or "(detect)", "bytes": sum(map(len, frames))}

        async def send(ws: ClientConnection) -> None:
            for frame in frames:
                await ws.send(frame)
                await asyncio.sleep(0.25)
            await ws.send("EOS")

        await self._converse(out, speech_url(self.ws, caps), send)
        return out

    async def vanish(self) -> Outcome:
        """Real speech for a few seconds, then a TCP reset without ``EOS``; the bound is
        on the server ending the session (it leaves the live index)."""
        out = Outcome("client vanishes", SHORT_BOUND_S)
        started = time.monotonic()
        speech = self.speech[: 16 * FRAME]
        try:
            async with asyncio.timeout(SHORT_BOUND_S + len(speech) / 32000):
                ws = await websockets.connect(speech_url(self.ws, RAW), max_size=None)
                reader = asyncio.create_task(self._read(ws, out))
                try:
                    for i in range(0, len(speech), FRAME):
                        await ws.send(speech[i : i + FRAME])
                        await asyncio.sleep(0.25)
                    await asyncio.sleep(0.5)
                finally:
                    with contextlib.suppress(OSError):  # the server may have closed it
                        _rst(ws.transport)
                    await stop_tasks(reader)
        except websockets.InvalidStatus as exc:
            out.http_status = exc.response.status_code
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            out.error = describe(exc)
        vanished = time.monotonic()
        sid = out.detail.get("sid")
        if out.status or out.http_status or out.error:
            pass  # the server ended it before the client could vanish
        elif not sid or self.is_live is None:
            out.detail["outcome"] = "client reset (session id unknown)"
        else:
            while True:
                live = await self.is_live(sid)
                if live is False:
                    out.detail["outcome"] = "client reset, session ended"
                    out.detail["server_ended_after_s"] = round(time.monotonic() - vanished, 2)
                    break
                if time.monotonic() - vanished > out.bound_s:
                    out.hung = True
                    break
                await asyncio.sleep(0.5)
        out.seconds = round(time.monotonic() - started, 2)
        return out

    async def status_hold(self) -> Outcome:
        """Status sockets opened and held; the server may push to them, not drop them."""
        out = Outcome("status sockets held", self.status_hold_s + SHORT_BOUND_S)
        started = time.monotonic()
        held = 0
        closed: list[int | None] = []
        http: list[int] = []

        async def hold() -> None:
            nonlocal held
            try:
                async with websockets.connect(f"{self.ws}/client/ws/status") as ws:
                    try:
                        async with asyncio.timeout(self.status_hold_s):
                            async for _raw in ws:
                                out.messages += 1
                    except TimeoutError:
                        held += 1
                        return
                    closed.append(ws.close_code)
            except websockets.InvalidStatus as exc:
                http.append(exc.response.status_code)
            except (OSError, websockets.WebSocketException) as exc:
                out.error = describe(exc)

        await asyncio.gather(*(hold() for _ in range(self.status_sockets)))
        out.seconds = round(time.monotonic() - started, 2)
        out.http_status = max(http) if http else None
        out.detail = {
            "sockets": self.status_sockets,
            "hold_s": self.status_hold_s,
            "held_to_the_end": held,
            "closed_by_server": closed,
            "outcome": f"held {held}/{self.status_sockets}",
        }
        return out

    # --- the conversation -------------------------------------------------------------

    async def _converse(
        self, out: Outcome, url: str, send: Callable[[ClientConnection], Coroutine[Any, Any, None]]
    ) -> None:
        """Connect, run ``send`` while reading every message until the server closes;
        all within ``out.bound_s``."""
        started = time.monotonic()
        ws: ClientConnection | None = None
        sender: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(out.bound_s):
                try:
                    ws = await websockets.connect(url, max_size=None, compression=None)
                except websockets.InvalidStatus as exc:
                    out.http_status = exc.response.status_code
                    return
                except websockets.InvalidMessage as exc:
                    # Not an HTTP/1.1 answer websockets can read (aiohttp answers a
                    # request line that is too long in HTTP/1.0): read the status line.
                    out.error = describe(exc)
                    out.detail["status_line"] = line = await upgrade_status(url)
                    if match := re.match(r"HTTP/\d\.\d (\d{3})", line):
                        out.http_status = int(match.group(1))
                    return
                sender = asyncio.create_task(send(ws))
                await self._read(ws, out)
                out.close_code = ws.close_code
        except TimeoutError:
            out.hung = True
        except (OSError, websockets.WebSocketException) as exc:
            out.error = describe(exc)
        finally:
            await stop_tasks(sender)
            if ws is not None and out.hung:
                ws.transport.abort()
            elif ws is not None:
                await ws.close()
            out.seconds = round(time.monotonic() - started, 2)

    async def _read(self, ws: ClientConnection, out: Outcome) -> None:
        try:
            async for raw in ws:
                out.messages += 1
                note(out, raw)
        except websockets.ConnectionClosedError:
            pass


async def upgrade_status(url: str) -> str:
    """The status line a server answers a websocket upgrade request for ``url`` with."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await writer.drain()
        return (await reader.readline()).decode(errors="replace").strip()[:200]
    except OSError as exc:
        return describe(exc)
    finally:
        writer.close()


def describe(exc: BaseException) -> str:
    """An exception and what caused it (``InvalidMessage`` says little by itself)."""
    text = f"{type(exc).__name__}: {exc}"
    if exc.__cause__ is not None:
        text += f" ({type(exc.__cause__).__name__}: {exc.__cause__})"
    return text[:300]


def note(out: Outcome, raw: str | bytes) -> None:
    """Keep a message's session id and the status (and its text) it ends with."""
    try:
        message = json.loads(raw)
    except ValueError:
        return
    if not isinstance(message, dict):
        return
    if message.get("id") and "sid" not in out.detail:
        out.detail["sid"] = str(message["id"])
    status = message.get("status")
    if isinstance(status, int) and status != 0:
        out.status = status
        out.message = str(message.get("message") or message.get("error") or "")[:200]
