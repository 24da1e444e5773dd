"""``/client/ws/speech``: the websocket transport, kaldi-gstreamer-server dialect.

A thin shell around :class:`~gateway.runner.SessionRunner`: binary frames are audio,
text ``EOS`` ends it, every message the core produces is sent as it comes, and the
socket closes when the core says so.
"""

from __future__ import annotations

import logging

from aiohttp import WSMsgType, web

from gateway.core import Outcome
from gateway.runner import EOS, AudioSource, SessionRunner, SessionSpec
from gateway.state import GATEWAY
from shared.config import GatewaySettings
from shared.protocol import BadRequest, ClientText, phrases_param

log = logging.getLogger(__name__)


def audio_socket(settings: GatewaySettings) -> web.WebSocketResponse:
    """The websocket for a stream of audio frames, for both dialects."""
    # aiohttp closes with 1009 on a frame of ``max_msg_size`` bytes or more; two bytes
    # over our limit let a frame one byte too long get a status message first. No
    # permessage-deflate: PCM barely compresses, and inflating it was a fifth of the
    # gateway's CPU under load (docs/performance.md).
    return web.WebSocketResponse(
        max_msg_size=settings.max_frame_bytes + 2, autoping=True, compress=False
    )


async def handle_speech(request: web.Request) -> web.WebSocketResponse:
    gateway = request.app[GATEWAY]
    settings = gateway.settings
    ws = audio_socket(settings)
    await ws.prepare(request)
    query = request.query
    spec = SessionSpec(
        model=query.get("model", settings.model),
        content_type=query.get("content-type", ""),
        transport="websocket",
        user_id=query.get("user-id", ""),
        content_id=query.get("content-id", ""),
        phrases=phrases_param(query["phrases"]) if "phrases" in query else None,
    )
    frames = _frames(ws, settings.max_frame_bytes)
    await SessionRunner(gateway, spec, frames, _SocketSink(ws), socket=ws).run()
    return ws


async def _frames(ws: web.WebSocketResponse, limit: int) -> AudioSource:
    """The client's frames as audio pieces and ``EOS``, until the socket closes."""
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            if len(msg.data) > limit:
                raise BadRequest(f"Frame of {len(msg.data)} bytes exceeds {limit}")
            yield msg.data
        elif msg.type == WSMsgType.TEXT:
            if ClientText.parse(msg.data).eos:
                yield EOS
        elif msg.type == WSMsgType.ERROR:
            raise BadRequest(f"Websocket error: {ws.exception()}")


class _SocketSink:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def deliver(self, outcome: Outcome) -> None:
        try:
            for message in outcome.messages:
                if not self.ws.closed:
                    await self.ws.send_str(message)
            if outcome.close and not self.ws.closed:
                await self.ws.close()
        except ConnectionResetError:  # the client is gone: nobody left to tell
            log.debug("client gone before %d message(s)", len(outcome.messages))
