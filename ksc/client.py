"""A streaming client that behaves like kaldi-gstreamer-server's ``client.py``.

It sends the file's bytes as they are (the server detects WAV), in blocks of a quarter
second of audio at ``byterate``, optionally paced in real time, then ``EOS``, and
collects every message until the server closes the socket.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

from ksc.endpoints import GatewayUrl
from shared.tasks import stop_tasks


@dataclass
class Transcript:
    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None

    @property
    def finals(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("result", {}).get("final")]

    @property
    def text(self) -> str:
        return " ".join(m["result"]["hypotheses"][0]["transcript"] for m in self.finals)

    @property
    def status(self) -> int:
        """The last non-zero status, or 0."""
        codes = [m.get("status", 0) for m in self.messages]
        return next((c for c in reversed(codes) if c != 0), 0)


def ws_base(url: str) -> str:
    """The gateway's websocket base for any form of its address (:mod:`ksc.endpoints`):
    ``http://host:port`` (what a browser shows) -> ``ws://host:port``; https -> wss."""
    return GatewayUrl.parse(url).ws()


def speech_url(base: str, content_type: str = "", **params: str) -> str:
    """The speech websocket of the gateway at ``base``: a base URL or any endpoint URL
    (ws://, wss://, http:// or https://), whose query is passed on."""
    return GatewayUrl.parse(base).speech(content_type, **params)


async def stream(
    url: str,
    data: bytes,
    *,
    byterate: int = 32000,
    realtime: bool = True,
    eos: bool = True,
    on_sent: Callable[[int], None] | None = None,
    on_message: Callable[[dict[str, Any]], None] | None = None,
) -> Transcript:
    """Send ``data`` to a speech websocket URL; return what the server said.

    ``on_sent(n)`` is told of every block sent, ``on_message`` of every message.
    """
    result = Transcript()
    block = max(1, byterate // 4)
    async with websockets.connect(url, max_size=None) as ws:

        async def send() -> None:
            for start in range(0, len(data), block):
                await ws.send(data[start : start + block])
                if on_sent is not None:
                    on_sent(len(data[start : start + block]))
                if realtime:
                    await asyncio.sleep(0.25)
            if eos:
                await ws.send("EOS")

        sender = asyncio.create_task(send())
        try:
            async for raw in ws:
                message = json.loads(raw)
                result.messages.append(message)
                if on_message is not None:
                    on_message(message)
        finally:
            await stop_tasks(sender)
        result.close_code = ws.close_code
    return result


def transcribe_file(base_url: str, path: Path, *, realtime: bool = False) -> Transcript:
    """Blocking convenience for the CLI: stream one file, return the transcript."""
    return asyncio.run(stream(speech_url(base_url), path.read_bytes(), realtime=realtime))
