"""``ksc transcribe``: stream files through a gateway, write transcripts or subtitles.

Output formats: ``text`` (one line per file), ``json`` (segments with times, and the
text), ``srt`` and ``vtt`` (cues of at most two lines of 42 characters and 7 s, cut
at pauses between the words the server timed; :mod:`ksc.subtitles`). On a terminal a
progress bar shows the upload, elapsed time and the real-time factor so far (audio
seconds transcribed per wall-clock second).

``--batch`` submits the files as batch jobs (``POST /v1/transcriptions``, docs/batch.md)
and polls for them instead of streaming; the output is the same.

``--url`` takes the gateway's base URL or any of its endpoint URLs (``ws://host:8888``,
``http://host:8888/``, ``ws://host:8888/client/ws/speech?model=ko``, …; see
:mod:`ksc.endpoints`); a query is passed on to the speech socket.

Exit codes: 0 all files transcribed; 1 the server ended a session with an error
status; 2 ``--url`` names no server; 3 the server could not be reached; 4 a file could
not be read.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import av
import websockets
from tqdm import tqdm

from ksc import subtitles
from ksc.client import Transcript, speech_url, stream
from ksc.endpoints import GatewayUrl

EXIT_OK, EXIT_SERVER, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_BAD_FILE = 0, 1, 2, 3, 4
FORMATS = ("text", "json", "srt", "vtt")
_AUDIO_BAR = (
    "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}{postfix}]"
)


@dataclass(frozen=True)
class Segment:
    index: int
    start: float
    end: float
    text: str


def segments(result: Transcript) -> list[Segment]:
    return [
        Segment(
            index=m["segment"],
            start=float(m.get("segment-start", 0.0)),
            end=float(m.get("segment-start", 0.0)) + float(m.get("segment-length", 0.0)),
            text=m["result"]["hypotheses"][0]["transcript"],
        )
        for m in result.finals
    ]


def render(result: Transcript, fmt: str, name: str = "") -> str:
    segs = segments(result)
    if fmt == "text":
        return result.text + "\n"
    if fmt == "json":
        # Each segment's words with their times (seconds from the start of the audio),
        # null when the server sent none for it.
        doc: dict[str, Any] = {
            "file": name,
            "text": result.text,
            "segments": [
                {**s.__dict__, "words": _json_words(m)}
                for s, m in zip(segs, result.finals, strict=True)
            ],
        }
        return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
    if fmt in ("srt", "vtt"):
        return _subtitles(result, fmt)
    raise ValueError(f"unknown format {fmt!r}")


def _subtitles(result: Transcript, fmt: str) -> str:
    """SubRip or WebVTT cues cut from the finals by :func:`ksc.subtitles.cut`."""
    cues = subtitles.cut(utterances(result))
    return subtitles.srt(cues) if fmt == "srt" else subtitles.vtt(cues)


def utterances(result: Transcript) -> list[subtitles.Utterance]:
    """Each final's text and segment times, with its words' times when the server
    aligned them (``word-alignment``: start and length from the start of the stream)."""
    out = []
    for m in result.finals:
        hypothesis = m["result"]["hypotheses"][0]
        start = float(m.get("segment-start", 0.0))
        end = start + float(m.get("segment-length", 0.0))
        words = _aligned_words(hypothesis.get("word-alignment"))
        out.append(subtitles.Utterance(hypothesis["transcript"], start, end, words))
    return out


def _json_words(final: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A final's ``word-alignment`` as ``{"word", "start", "end"}`` entries (the
    cluster's own shape, ``shared.wire.FinalResult.words``); None without times."""
    words = _aligned_words(final["result"]["hypotheses"][0].get("word-alignment"))
    if not words:
        return None
    return [{"word": w.text, "start": w.start, "end": round(w.end, 3)} for w in words]


def _aligned_words(alignment: Any) -> tuple[subtitles.Word, ...]:
    """``word-alignment`` entries as words; none if any entry is malformed (a server
    of another make): the cues then fall back to the segment's times."""
    try:
        return tuple(
            subtitles.Word(
                str(w["word"]), float(w["start"]), float(w["start"]) + float(w["length"])
            )
            for w in alignment or ()
        )
    except (KeyError, TypeError, ValueError):
        return ()


def audio_seconds(data: bytes) -> float | None:
    """How long the audio is, if its container says (WAV, FLAC, MP3, OGG, WebM with
    durations); ``None`` for raw PCM, live-style WebM and anything unreadable."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if container.duration:
                return float(container.duration / av.time_base)
    except (av.FFmpegError, ValueError, OSError):
        pass
    return None


def _transcribe_one(url: str, data: bytes, name: str, realtime: bool, err: TextIO) -> Transcript:
    """One file over the speech websocket. On a terminal, a progress bar: over the
    decoded audio when the file says how long it is, else over the bytes sent; with the
    elapsed time and how many times faster than real time the audio is decoded."""
    duration = audio_seconds(data)
    bar_options: dict[str, Any] = (
        {"total": round(duration, 1), "unit": " audio s", "bar_format": _AUDIO_BAR}
        if duration
        else {"total": len(data), "unit": "B", "unit_scale": True}
    )
    bar = tqdm(desc=name[-30:], file=err, disable=not err.isatty(), leave=False, **bar_options)
    started = time.monotonic()

    def on_message(message: dict[str, Any]) -> None:
        if message.get("result", {}).get("final"):
            audio = float(message.get("total-length", 0.0))
            elapsed = max(time.monotonic() - started, 1e-6)
            speed = f"{audio / elapsed:.1f}x real time"
            if duration:
                bar.set_postfix_str(speed, refresh=False)
                bar.update(round(min(audio, duration), 1) - bar.n)
            else:
                bar.set_postfix_str(f"audio {audio:.1f} s, {speed}")

    try:
        return asyncio.run(
            stream(
                speech_url(url),
                data,
                realtime=realtime,
                on_sent=None if duration else bar.update,
                on_message=on_message,
            )
        )
    finally:
        bar.close()


def run(files: list[str], url: str, fmt: str, out: str | None, realtime: bool) -> int:
    """Transcribe ``files`` in order; returns the exit code."""
    err = sys.stderr
    if not _valid_url(url, err):
        return EXIT_USAGE
    code = EXIT_OK
    for name in files:
        data = _read(name, err)
        if data is None:
            code = max(code, EXIT_BAD_FILE)
            continue
        try:
            result = _transcribe_one(url, data, name, realtime, err)
        except (OSError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            print(f"{url}: cannot reach the server: {exc}", file=err)
            return EXIT_UNREACHABLE
        if result.status:
            failure = next(m for m in reversed(result.messages) if m.get("status"))
            print(f"{name}: status {failure['status']}: {failure.get('message', '')}", file=err)
            code = max(code, EXIT_SERVER)
            continue
        _write(render(result, fmt, name), out, name, fmt, many=len(files) > 1, err=err)
    return code


def _valid_url(url: str, err: TextIO) -> bool:
    """Whether ``--url`` names a gateway (any form :mod:`ksc.endpoints` reads), saying
    why not on ``err``."""
    try:
        GatewayUrl.parse(url)
    except ValueError as exc:
        print(f"--url: {exc}", file=err)
        return False
    return True


def _read(name: str, err: TextIO) -> bytes | None:
    """The file's bytes, or ``None`` after saying why it cannot be read."""
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        print(f"{name}: cannot read: {exc.strerror}", file=err)
        return None


def _write(
    text: str, out: str | None, name: str, fmt: str, *, many: bool, err: TextIO, note: str = ""
) -> None:
    """To stdout, or to the file ``-o`` names for this input (saying so on ``err``)."""
    target = _output(out, name, fmt, many=many)
    if target is None:
        sys.stdout.write(text)
    else:
        target.write_text(text, encoding="utf-8")
        print(f"{name} -> {target}{note}", file=err)


def _output(out: str | None, name: str, fmt: str, *, many: bool) -> Path | None:
    """``-o FILE`` for one input, ``-o DIR`` for several (one file each), else stdout."""
    if out is None or out == "-":
        return None
    target = Path(out)
    if many or target.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return target / (Path(name).stem + "." + ("txt" if fmt == "text" else fmt))
    return target


def run_batch(files: list[str], url: str, fmt: str, out: str | None) -> int:
    """``--batch``: submit every file as a batch job (so they decode in parallel on the
    cluster), then wait for each and write it like a streamed one. Same exit codes; an
    upload the gateway refuses as too large or not audio (413, 415) counts as a bad file."""
    from ksc import batch_client

    err = sys.stderr
    if not _valid_url(url, err):
        return EXIT_USAGE
    base = batch_client.http_base(url)
    code = EXIT_OK
    jobs: list[tuple[str, str]] = []
    for name in files:
        data = _read(name, err)
        if data is None:
            code = max(code, EXIT_BAD_FILE)
            continue
        try:
            jobs.append((name, batch_client.submit(base, data)))
        except batch_client.SubmitError as exc:
            print(f"{name}: {exc}", file=err)
            code = max(code, EXIT_BAD_FILE if exc.code in (400, 413, 415) else EXIT_SERVER)
        except OSError as exc:
            print(f"{base}: cannot reach the server: {exc}", file=err)
            return EXIT_UNREACHABLE
    for name, job_id in jobs:
        try:
            doc = batch_client.wait(base, job_id)
        except (OSError, batch_client.SubmitError) as exc:
            print(f"{base}: cannot reach the server: {exc}", file=err)
            return EXIT_UNREACHABLE
        if doc["state"] == "failed":
            print(
                f"{name}: job {job_id}: status {doc.get('status')}: {doc.get('message')}", file=err
            )
            code = max(code, EXIT_SERVER)
            continue
        text = render(batch_client.as_transcript(doc), fmt, name)
        _write(text, out, name, fmt, many=len(files) > 1, err=err, note=f" (job {job_id})")
    return code
