"""Live sessions of real speech as long as wanted, and what each one is judged by.

A :class:`Plan` is real clips (``manifest.tsv`` recordings) end to end, a pause between
them long enough to end a segment, so a session of any length has a reference
transcript and a known place for every clip. :func:`run_live` streams it as a
microphone would (16 kHz PCM in quarter seconds, real time, then ``EOS``) and waits for
the server to close; :func:`judge` checks the finals: numbered 0, 1, 2 … with none
missing or repeated, some text where every clip was, and the character error rate
against what the same clips give decoded alone (:func:`quiet`).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

from harness.fuzz import RAW
from harness.media import read_wav
from harness.scoring import cer, normalise, read_manifest
from ksc.client import speech_url, stream

#: Silence before the first clip and between clips: long enough to end a segment.
LEAD_S = 0.3
PAUSE_S = 1.5
#: Clips per window of the session's character error rate (:func:`judge`).
WINDOW = 8
BYTES_PER_S = 32000


@dataclass(frozen=True)
class Clip:
    name: str
    ref: str
    pcm: bytes

    @property
    def seconds(self) -> float:
        return len(self.pcm) / BYTES_PER_S


def load_clips(*folders: Path) -> list[Clip]:
    """Every recording of each folder's ``manifest.tsv`` (folders without one skipped)."""
    clips = []
    for folder in folders:
        if not (folder / "manifest.tsv").exists():
            continue
        for path, ref in read_manifest(folder):
            clips.append(Clip(f"{folder.name}/{path.name}", ref, read_wav(path)))
    return clips


@dataclass(frozen=True)
class Plan:
    """A session's audio: clips (indexes into the clip list) and where each one is."""

    clips: tuple[int, ...]
    spans: tuple[tuple[float, float], ...]
    pcm: bytes

    @property
    def seconds(self) -> float:
        return len(self.pcm) / BYTES_PER_S


def silence(seconds: float) -> bytes:
    return bytes(2 * round(seconds * BYTES_PER_S / 2))


def plan(clips: Sequence[Clip], order: Iterator[int], seconds: float) -> Plan:
    """Clips taken from ``order`` until the session is at least ``seconds`` long."""
    parts = [silence(LEAD_S)]
    at = LEAD_S
    chosen: list[int] = []
    spans: list[tuple[float, float]] = []
    while not chosen or at < seconds:
        i = next(order)
        clip = clips[i]
        chosen.append(i)
        spans.append((round(at, 3), round(at + clip.seconds, 3)))
        parts += [clip.pcm, silence(PAUSE_S)]
        at += clip.seconds + PAUSE_S
    return Plan(tuple(chosen), tuple(spans), b"".join(parts))


@dataclass
class Run:
    """One attempt at a session, as the client saw it."""

    started: float = field(default_factory=time.time)
    ended: float = 0.0
    eos_at: float = 0.0
    #: finals and status messages; partials are only counted
    messages: list[dict[str, Any]] = field(default_factory=list)
    partials: int = 0
    close_code: int | None = None
    http_status: int | None = None
    error: str = ""
    hung: bool = False
    #: longest silence of the server between two messages while audio was flowing
    max_gap_s: float = 0.0
    bytes_sent: int = 0

    @property
    def status(self) -> int:
        return next((m["status"] for m in reversed(self.messages) if m.get("status")), 0)

    @property
    def message(self) -> str:
        return next((str(m.get("message", "")) for m in self.messages if m.get("status")), "")

    @property
    def sid(self) -> str:
        return next((str(m["id"]) for m in self.messages if m.get("id")), "")

    @property
    def refused(self) -> bool:
        return self.status == 9

    @property
    def never_connected(self) -> bool:
        """Nothing went either way: the gateway was not there (a restart)."""
        return not self.bytes_sent and not self.messages and not self.partials

    @property
    def completed(self) -> bool:
        return (
            self.close_code == 1000
            and self.status == 0
            and not self.error
            and not self.hung
            and bool(self.eos_at)
        )

    @property
    def finals(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("result", {}).get("final")]


async def run_live(base: str, pcm: bytes, limit_s: float) -> Run:
    """Stream ``pcm`` in real time, ``EOS``, read until the server closes (or ``limit_s``)."""
    run = Run()
    last = 0.0

    def on_sent(n: int) -> None:
        run.bytes_sent += n
        if run.bytes_sent >= len(pcm):
            run.eos_at = time.time()

    def on_message(message: dict[str, Any]) -> None:
        nonlocal last
        now = time.monotonic()
        if last and not run.eos_at:
            run.max_gap_s = max(run.max_gap_s, now - last)
        last = now
        if message.get("status") or message.get("result", {}).get("final"):
            run.messages.append(message)
        else:
            run.partials += 1

    try:
        async with asyncio.timeout(limit_s):
            transcript = await stream(
                speech_url(base, RAW), pcm, on_sent=on_sent, on_message=on_message
            )
        run.close_code = transcript.close_code
    except TimeoutError:
        run.hung = True
    except websockets.InvalidStatus as exc:
        run.http_status = exc.response.status_code
        run.error = f"HTTP {run.http_status}"
    except websockets.ConnectionClosed as exc:
        run.close_code = exc.rcvd.code if exc.rcvd is not None else 1006
        run.error = f"{type(exc).__name__}: {exc}"[:300]
    except (OSError, websockets.WebSocketException) as exc:
        run.error = f"{type(exc).__name__}: {exc}"[:300]
    run.ended = time.time()
    return run


def final_spans(finals: Sequence[dict[str, Any]]) -> list[tuple[int, float, float, str]]:
    """(segment, start, end, text) of each final."""
    out = []
    for f in finals:
        start = float(f.get("segment-start", 0.0))
        end = start + float(f.get("segment-length", 0.0))
        out.append((int(f["segment"]), start, end, f["result"]["hypotheses"][0]["transcript"]))
    return out


def judge(
    the_plan: Plan,
    clips: Sequence[Clip],
    finals: Sequence[dict[str, Any]],
    quiet: dict[int, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Finals numbered 0..n-1 once each, in order; text over every clip that has some
    when decoded alone; CER of the session against the clips' references, beside the
    CER of the same clips decoded alone (``quiet``)."""
    spans = final_spans(finals)
    numbers = [s for s, _, _, _ in spans]
    duplicates = sorted(n for n, c in Counter(numbers).items() if c > 1)
    missing = sorted(set(range(max(numbers) + 1)) - set(numbers)) if numbers else []
    # CER over windows of WINDOW consecutive clips: a final goes to the window of the
    # clip it overlaps most, so a segment that runs over from one clip into the next
    # (the endpointer did not cut at the pause) costs nothing unless it crosses windows.
    windows: list[list[str]] = [[] for _ in range(0, len(the_plan.clips), WINDOW)]
    for _, start, end, text in spans:
        overlaps = [min(end, b) - max(start, a) for a, b in the_plan.spans]
        best = max(range(len(overlaps)), key=overlaps.__getitem__)
        windows[best // WINDOW].append(text)
    uncovered = []
    for k, (i, (a, b)) in enumerate(zip(the_plan.clips, the_plan.spans, strict=True)):
        over = " ".join(t for _, s, e, t in spans if s < b and e > a)
        expected = quiet is None or normalise(quiet.get(i, {}).get("text", "x"))
        if expected and not normalise(over):
            uncovered.append({"clip": clips[i].name, "at_s": a, "index": k})
    edits = chars = quiet_edits = 0
    for w, texts in enumerate(windows):
        refs = [clips[i].ref for i in the_plan.clips[w * WINDOW : (w + 1) * WINDOW]]
        e, n = cer(" ".join(refs), " ".join(texts))
        edits += e
        chars += n
    if quiet is not None:
        quiet_edits = sum(quiet[i]["edits"] for i in the_plan.clips if i in quiet)
    return {
        "finals": len(numbers),
        "in_order": numbers == sorted(numbers),
        "missing": missing,
        "duplicates": duplicates,
        "uncovered": uncovered,
        "edits": edits,
        "ref_chars": chars,
        "cer": round(edits / chars, 4) if chars else 0.0,
        "quiet_cer": round(quiet_edits / chars, 4) if chars and quiet is not None else None,
    }


async def quiet(
    base: str, clips: Sequence[Clip], indexes: Sequence[int], concurrency: int = 2
) -> dict[int, dict[str, Any]]:
    """Each clip decoded alone, unpaced, with the silence a session puts around it."""
    gate = asyncio.Semaphore(concurrency)
    out: dict[int, dict[str, Any]] = {}

    async def one(i: int) -> None:
        clip = clips[i]
        async with gate:
            result = await stream(
                speech_url(base, RAW),
                silence(LEAD_S) + clip.pcm + silence(PAUSE_S),
                realtime=False,
            )
        text = result.text
        edits, chars = cer(clip.ref, text)
        out[i] = {"text": text, "edits": edits, "chars": chars, "status": result.status}

    await asyncio.gather(*(one(i) for i in sorted(set(indexes))))
    return out
