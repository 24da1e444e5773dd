"""``/client/ws/speech``: the websocket transport, kaldi-gstreamer-server dialect.

A thin shell around :class:`~gateway.runner.SessionRunner`: binary frames are audio,
text ``EOS`` ends it, every message the core produces is sent as it comes, and the
socket closes when the core says so.
"""

from __future__ import annotations

import logging

from aiohttp import WSMsgType, web

from gateway.runner import EOS, AudioSource, SessionRunner, SessionSpec
from gateway.session import Outcome
from gateway.state import GATEWAY
from shared.protocol import BadRequest, ClientText, phrases_param

log = logging.getLogger(__name__)


async def handle_speech(request: web.Request) -> web.WebSocketResponse:
    gateway = request.app[GATEWAY]
    settings = gateway.settings
    # aiohttp refuses larger frames itself (close 1009); one byte more than our limit
    # lets us answer an oversized frame with a status message first.
    ws = web.WebSocketResponse(max_msg_size=settings.max_frame_bytes + 1, autoping=True)
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
